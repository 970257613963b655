"""LoRA (kohya format): names against diffusers' own modules, the delta maths by hand, per-block
ratios, extraction round trips against the optimal truncation, merging, bad inputs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sd_keysets import inference_keys, tiny_state_dict

from benchmark.toyworld import zoo
from merge_core import CheckpointError, Family, layout_for, open_checkpoint, save_safetensors
from merge_core.lora import (
    LoraSpec,
    apply_loras_to_file,
    block_ratios,
    extract_lora,
    lora_targets,
    merge_loras,
    read_lora,
)
from merge_core.lowrank import effective_rank_error

FAMILY_DIR = "configs/families"


class _Keys:
    """A checkpoint's key set without tensors (real SD key names and shapes)."""

    def __init__(self, family: str):
        self.family = Family(family)
        self._k = inference_keys(family)

    def keys(self):
        return list(self._k)

    def shape(self, k):
        return tuple(self._k[k])


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_names_match_diffusers_modules(family):
    """kohya SD1/SD2 UNet names are diffusers module paths: build diffusers' UNet (meta device) and
    check that every attention/resnet/resampler layer maps to a checkpoint weight of its shape."""
    import diffusers

    config = json.loads(open(f"{FAMILY_DIR}/{family}/unet/config.json").read())
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(config)
    targets = lora_targets(_Keys(family))
    n = 0
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if not re.search(r"\.(attentions|resnets|downsamplers|upsamplers)\.", "." + name):
            continue
        t = targets["lora_unet_" + name.replace(".", "_")]
        assert t.shape == tuple(module.weight.shape), name
        assert t.canonical and t.default
        n += 1
    assert n > 250


def test_sdxl_names_and_fused_qkv_rows():
    targets = lora_targets(_Keys("sdxl"))
    # kohya's SDXL spelling is ldm (spec 7.1 example); the diffusers spelling is accepted as an alias
    t = targets["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    alias = targets["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert t.key == alias.key and t.canonical and not alias.canonical and t.block == "IN04"
    # OpenCLIP bigG (1280 wide): q, k, v are row thirds of in_proj_weight [3840, 1280]
    key = "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"
    for i, q in enumerate("qkv"):
        tq = targets[f"lora_te2_text_model_encoder_layers_3_self_attn_{q}_proj"]
        assert (tq.key, tq.rows, tq.shape, tq.block) == (key, (1280 * i, 1280 * (i + 1)), (1280, 1280), "TE")
    assert targets["lora_te1_text_model_encoder_layers_0_mlp_fc1"].shape == (3072, 768)


def _lora_file(path, modules: dict, dtype=torch.float32):
    tensors = {}
    for name, (down, up, alpha) in modules.items():
        tensors[f"{name}.lora_down.weight"] = down.to(dtype)
        tensors[f"{name}.lora_up.weight"] = up.to(dtype)
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path))
    return path


def test_apply_matches_hand_computed_delta_linear_conv_and_fused_rows(tmp_path):
    """W + ratio * alpha/r * up@down, computed with numpy: a linear, a 3x3 LoCon conv, and the q rows
    of an SD2 fused in_proj (only those rows change)."""
    sd = tiny_state_dict("sd2", seed=3, dtype=torch.float32)
    model = save_safetensors(sd, tmp_path / "m.safetensors")
    g = torch.Generator().manual_seed(0)
    lin = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    qkv = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
    o, i = sd[lin].shape
    co, ci, kh, kw = sd[conv].shape
    w = sd[qkv].shape[0] // 3
    mods = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            (torch.randn(2, i, generator=g), torch.randn(o, 2, generator=g), 1.0),
        "lora_unet_down_blocks_0_resnets_0_conv1":
            (torch.randn(3, ci, kh, kw, generator=g), torch.randn(co, 3, 1, 1, generator=g), None),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
            (torch.randn(1, sd[qkv].shape[1], generator=g), torch.randn(w, 1, generator=g), 4.0),
    }
    lora = _lora_file(tmp_path / "l.safetensors", mods)
    apply_loras_to_file(model, [LoraSpec(str(lora), -0.7)], tmp_path / "o.safetensors", dtype="fp32", progress=False)
    got = load_file(tmp_path / "o.safetensors")

    def npdelta(name, rank, alpha):
        down, up, _ = mods[name]
        return (-0.7) * (alpha / rank) * (up.numpy().reshape(up.shape[0], -1) @ down.numpy().reshape(rank, -1))

    d = npdelta("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 2, 1.0)
    np.testing.assert_allclose(got[lin].numpy(), sd[lin].numpy() + d, rtol=1e-5, atol=1e-5)
    d = npdelta("lora_unet_down_blocks_0_resnets_0_conv1", 3, 3.0).reshape(co, ci, kh, kw)  # no alpha = rank
    np.testing.assert_allclose(got[conv].numpy(), sd[conv].numpy() + d, rtol=1e-5, atol=1e-5)
    d = npdelta("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1, 4.0)
    expect = sd[qkv].numpy().copy()
    expect[:w] += d
    np.testing.assert_allclose(got[qkv].numpy(), expect, rtol=1e-5, atol=1e-5)
    untouched = [k for k in sd if k not in (lin, conv, qkv)]
    assert all(torch.equal(got[k], sd[k]) for k in untouched)


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    z = zoo()
    path = folder / "colorist-r8.safetensors"
    stats = extract_lora(z["base"], z["colorist"], path, rank=8, dtype="fp32", progress=False)
    return z, path, stats


def _block_of(key: str) -> str:
    """Independent of the layout code: SD1 block ids straight from the key (DESIGN.md rules)."""
    rest = key.removeprefix("model.diffusion_model.")
    if key.startswith("cond_stage_model."):
        return "TE"
    if rest.startswith("time_embed"):
        return "IN00"
    if rest.startswith("out."):
        return "OUT11"
    m = re.match(r"(input|output)_blocks\.(\d+)\.", rest)
    if m:
        return ("IN" if m.group(1) == "input" else "OUT") + f"{int(m.group(2)):02d}"
    assert rest.startswith("middle_block.")
    return "M00"


def test_per_block_ratios_hit_exactly_the_named_blocks(tmp_path, toy_lora):
    z, lora, _ = toy_lora
    layout = layout_for("sd1")
    values = [0.1 * (i + 1) for i in range(26)]  # BASE, IN00..IN11, M00, OUT00..OUT11: all distinct
    ratio = dict(zip(("TE", *layout.blocks), values, strict=True))
    one, blk = tmp_path / "one.safetensors", tmp_path / "blk.safetensors"
    apply_loras_to_file(z["base"], [LoraSpec(str(lora))], one, dtype="fp32", progress=False)
    apply_loras_to_file(z["base"], [LoraSpec(str(lora), 1.0, ",".join(map(str, values)))], blk,
                        dtype="fp32", progress=False)
    base, full, per = load_file(z["base"]), load_file(one), load_file(blk)
    seen = set()
    for key, w0 in base.items():
        if not w0.is_floating_point() or key not in full:
            continue
        d_full = full[key].float() - w0.float()
        d_blk = per[key].float() - w0.float()
        if not d_full.abs().max() > 0:
            assert torch.equal(per[key], full[key]), key  # untouched by the LoRA: untouched by the ratios
            continue
        r = ratio[_block_of(key)]
        seen.add(_block_of(key))
        torch.testing.assert_close(d_blk, r * d_full, rtol=1e-4, atol=1e-6)
    assert len(seen) >= 20  # a LoCon extraction touches almost every block


def test_short_lists_presets_and_negative_ratio():
    r = block_ratios("sd1", "MIDD", 0.5)
    # MIDD = 1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0 over BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11
    assert r["TE"] == 0.5 and r["IN05"] == 0.5 and r["M00"] == 0.5 and r["OUT06"] == 0.5
    assert r["IN01"] == 0 and r["IN04"] == 0 and r["OUT07"] == 0 and r["IN03"] == 0  # IN03: not in the 17
    r = block_ratios("sdxl", "1,0,0,0,0,2,0,0,0,0,0,3", -1.0)  # BASE, IN04, IN05, IN07, IN08, M00, OUT00..05
    assert r["TE"] == -1 and r["M00"] == -2 and r["OUT05"] == -3 and r["IN04"] == 0
    with pytest.raises(ValueError, match="17 or 26"):
        block_ratios("sd1", "1,1,1")
    with pytest.raises(ValueError, match="preset"):
        block_ratios("sd1", "MIDDLE")


def test_extraction_round_trip_within_the_truncation_error(tmp_path, toy_lora):
    """apply(A, extract(A, B, r)) = A + D_r: per module the residual is the Eckart-Young optimum,
    and at full rank B comes back."""
    z, lora, stats = toy_lora
    a, b = open_checkpoint(z["base"]), open_checkpoint(z["colorist"])
    targets = {n: t for n, t in lora_targets(a).items() if t.canonical and t.default}
    for name, res in list(stats.residuals.items())[::25]:
        t = targets[name]
        d = (b.tensor(t.key).float() - a.tensor(t.key).float()).reshape(t.shape[0], -1)
        assert res == pytest.approx(effective_rank_error(d, 8), abs=1e-4), name
    full = tmp_path / "full.safetensors"
    extract_lora(z["base"], z["colorist"], full, rank=64, dtype="fp32", progress=False)
    out = tmp_path / "b.safetensors"
    apply_loras_to_file(z["base"], [LoraSpec(str(full))], out, dtype="fp32", progress=False)
    got = load_file(out)
    for t in targets.values():
        torch.testing.assert_close(got[t.key], b.tensor(t.key).float(), rtol=1e-4, atol=1e-5)
    # a negative ratio moves the other way by the same amount
    neg = tmp_path / "neg.safetensors"
    apply_loras_to_file(z["base"], [LoraSpec(str(lora), -1.0)], neg, dtype="fp32", progress=False)
    pos = tmp_path / "pos.safetensors"
    apply_loras_to_file(z["base"], [LoraSpec(str(lora), 1.0)], pos, dtype="fp32", progress=False)
    gn, gp = load_file(neg), load_file(pos)
    key = next(iter(targets.values())).key
    torch.testing.assert_close(gn[key] - a.tensor(key).float(), -(gp[key] - a.tensor(key).float()))


def test_merge_concatenates_same_ranks_and_refactorises_others(tmp_path, toy_lora):
    z, lora8, _ = toy_lora
    lora4 = tmp_path / "sizer-r4.safetensors"
    extract_lora(z["base"], z["sizer"], lora4, rank=4, conv_rank=0, dtype="fp32", progress=False)
    same = tmp_path / "same.safetensors"
    s = merge_loras([(str(lora8), 0.6), (str(lora8), -0.2)], same, dtype="fp32")
    assert s["mode"] == "concatenate" and read_lora(same).modules[next(iter(read_lora(same).modules))].rank == 16
    mixed = tmp_path / "mixed.safetensors"
    s = merge_loras([(str(lora8), 0.6), (str(lora4), 0.5)], mixed, rank=12, dtype="fp32")
    assert s["mode"] == "svd"
    # baking the merged LoRA = baking both (rank 12 >= 8 + 4 keeps the whole sum)
    for merged, specs in ((same, [(lora8, 0.6), (lora8, -0.2)]), (mixed, [(lora8, 0.6), (lora4, 0.5)])):
        one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
        apply_loras_to_file(z["base"], [LoraSpec(str(merged))], one, dtype="fp32", progress=False, overwrite=True)
        apply_loras_to_file(z["base"], [LoraSpec(str(p), r) for p, r in specs], two, dtype="fp32",
                            progress=False, overwrite=True)
        g1, g2 = load_file(one), load_file(two)
        for k in g1:
            torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=2e-5)


def test_bad_loras_are_refused_before_anything_is_written(tmp_path, toy_lora):
    z, lora, _ = toy_lora
    out = tmp_path / "out.safetensors"
    sd = load_file(lora)

    def refused(tensors, match):
        p = tmp_path / "bad.safetensors"
        save_file(tensors, str(p))
        with pytest.raises(CheckpointError, match=match):
            apply_loras_to_file(z["base"], [LoraSpec(str(p))], out, progress=False)
        assert not out.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["bad.safetensors"]

    xl = {k.replace("lora_te_", "lora_te1_"): v for k, v in sd.items()}
    refused(xl, "LoRA for SDXL")
    unknown = dict(sd)
    unknown["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(8, 4)
    unknown["lora_unet_no_such_block_to_q.lora_up.weight"] = torch.zeros(4, 8)
    refused(unknown, "lora_unet_no_such_block_to_q")
    # right names, wrong sizes: a LoRA of the real SD1.5 on the toy model
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    refused({f"{name}.lora_down.weight": torch.zeros(4, 320), f"{name}.lora_up.weight": torch.zeros(320, 4)},
            "another family or model size")
    refused({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, "LoHa")
    refused({f"{name}.lora_down.weight": torch.zeros(4, 32)}, "no lora_up")
    # a full checkpoint given as the LoRA
    with pytest.raises(CheckpointError, match="not a kohya LoRA key"):
        apply_loras_to_file(z["base"], [LoraSpec(str(z["sizer"]))], out, progress=False)
    # an existing output is never touched
    out.write_bytes(b"keep")
    with pytest.raises(CheckpointError, match="already exists"):
        apply_loras_to_file(z["base"], [LoraSpec(str(lora))], out, progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        extract_lora(z["base"], z["sizer"], out, rank=4, progress=False)
    assert out.read_bytes() == b"keep"


def test_extracted_file_is_kohya_format_with_metadata(toy_lora):
    _, lora, stats = toy_lora
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    info = json.loads(meta["mergesearch_lora_extract"])
    assert len(info["a"]["sha256"]) == 64 and info["rank"] == 8
    assert len(keys) == 3 * stats.modules
    assert all(re.match(r"lora_(unet|te)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)$", k) for k in keys)
    assert math.isclose(read_lora(lora).modules[keys[0].split(".")[0]].scale, 1.0)


def test_spec_parsing():
    assert LoraSpec.parse("a.safetensors") == LoraSpec("a.safetensors", 1.0, None)
    assert LoraSpec.parse("a.safetensors:-0.5:MIDD") == LoraSpec("a.safetensors", -0.5, "MIDD")
    assert LoraSpec.parse("a.safetensors:0.5:1,0,1").blocks == "1,0,1"
    with pytest.raises(ValueError, match="number"):
        LoraSpec.parse("a.safetensors:half")


def test_cli_extract_apply_merge(tmp_path, capsys):
    from search.cli import main

    z = zoo()
    lora = tmp_path / "l.safetensors"
    assert main(["lora", "extract", str(z["base"]), str(z["sizer"]), "--rank", "4", "-o", str(lora), "-q"]) == 0
    out = tmp_path / "o.safetensors"
    assert main(["lora", "apply", str(z["base"]), f"{lora}:0.5:ALL", "-o", str(out), "-q"]) == 0
    assert open_checkpoint(out).family == Family.SD1
    merged = tmp_path / "m.safetensors"
    assert main(["lora", "merge", f"{lora}:0.5", f"{lora}:0.5", "-o", str(merged), "-q"]) == 0
    assert main(["lora", "apply", str(z["base"]), f"{lora}:1:1,2", "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "17 or 26" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_sdxl_lora_on_both_text_encoders_and_the_ldm_named_unet(tmp_path):
    """SDXL: lora_te1 (CLIP-L), lora_te2 (OpenCLIP bigG, k rows of the fused in_proj) and an ldm-named
    UNet module, against numpy."""
    sd = tiny_state_dict("sdxl", seed=4, dtype=torch.float32)
    model = save_safetensors(sd, tmp_path / "xl.safetensors")
    g = torch.Generator().manual_seed(1)
    te1 = "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
    te2 = "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight"
    unet = "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn2.to_v.weight"
    w = sd[te2].shape[0] // 3
    mods = {
        "lora_te1_text_model_encoder_layers_1_mlp_fc2": (torch.randn(2, sd[te1].shape[1], generator=g),
                                                         torch.randn(sd[te1].shape[0], 2, generator=g), 1.0),
        "lora_te2_text_model_encoder_layers_2_self_attn_k_proj": (torch.randn(1, sd[te2].shape[1], generator=g),
                                                                  torch.randn(w, 1, generator=g), 2.0),
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_v": (
            torch.randn(3, sd[unet].shape[1], generator=g), torch.randn(sd[unet].shape[0], 3, generator=g), 3.0),
    }
    lora = _lora_file(tmp_path / "xl-lora.safetensors", mods)
    # BASE=0.5 for the text encoders, OUT02=2 (20-value SDXL layout: BASE, IN00..IN08, M00, OUT00..OUT08)
    blocks = ["0.5"] + ["0"] * 10 + ["0", "0", "2"] + ["0"] * 6
    apply_loras_to_file(model, [LoraSpec(str(lora), 1.0, ",".join(blocks))], tmp_path / "o.safetensors",
                        dtype="fp32", progress=False)
    got = load_file(tmp_path / "o.safetensors")

    def npdelta(name, ratio):
        down, up, alpha = mods[name]
        return ratio * (alpha / down.shape[0]) * (up.numpy() @ down.numpy())

    np.testing.assert_allclose(got[te1].numpy(), sd[te1].numpy() + npdelta(
        "lora_te1_text_model_encoder_layers_1_mlp_fc2", 0.5), rtol=1e-5, atol=1e-5)
    expect = sd[te2].numpy().copy()
    expect[w:2 * w] += npdelta("lora_te2_text_model_encoder_layers_2_self_attn_k_proj", 0.5)
    np.testing.assert_allclose(got[te2].numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[unet].numpy(), sd[unet].numpy() + npdelta(
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_v", 2.0), rtol=1e-5, atol=1e-5)
    # an SD1 LoRA (lora_te_) on this SDXL model is refused by name
    sd1 = _lora_file(tmp_path / "sd1-lora.safetensors", {
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (torch.zeros(1, 6), torch.zeros(6, 1), 1.0)})
    with pytest.raises(CheckpointError, match="LoRA for SD1/SD2"):
        apply_loras_to_file(model, [LoraSpec(str(sd1))], tmp_path / "x.safetensors", progress=False)
