"""Checkpoints as users have them: fp8 and fp64 sources, partial files, the SDXL refiner, inpainting
and instruct-pix2pix recipes, prediction-type metadata, schedule buffers, misnamed files and
other tools' metadata. Files are written with the safetensors library and read back with it, and
every expected value is computed per key in float64 numpy from the source tensors."""

from __future__ import annotations

import hashlib
import json
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from sd_keysets import keyset, tiny_checkpoint

from merge_core import CheckpointError, Recipe, Source, merge_to_file, open_checkpoint
from merge_core.errors import CheckpointWarning

UNET = "model.diffusion_model."
CONV_IN = UNET + "input_blocks.0.0.weight"
TE_PREFIX = ("cond_stage_model.", "conditioner.")
VAE_PREFIX = "first_stage_model."
F8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def save(sd, path, metadata=None):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def recipe(paths, family, method="weighted-sum", params=(0.5,), **kw):
    return Recipe.uniform(family, method, [Source(path=str(p)) for p in paths], params, **kw)


def part_of(key: str) -> str:
    if key.startswith(UNET):
        return "unet"
    return "vae" if key.startswith(VAE_PREFIX) else "te"


def assert_no_output(folder):
    assert not [p.name for p in folder.iterdir() if p.name.startswith((".m", "m.", "out"))], list(folder.iterdir())


# -- every float dtype torch stores, mixed in any order ---------------------------------------------------

MIXES = [
    ("fp16", "fp8_e4m3fn"),
    ("fp8_e4m3fn", "fp16"),
    ("fp8_e5m2", "bf16"),
    ("fp8_e4m3fn", "fp8_e5m2"),
    ("fp64", "fp32"),
    ("bf16", "fp64"),
]
TORCH = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64,
         "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@pytest.mark.parametrize(
    "family,mix", [("sd1", m) for m in MIXES] + [("sdxl", MIXES[0]), ("sdxl", MIXES[3])],
    ids=[f"sd1-{'-'.join(m)}" for m in MIXES] + ["sdxl-fp16-fp8_e4m3fn", "sdxl-fp8_e4m3fn-fp8_e5m2"],
)
def test_any_dtype_mix_merges_in_fp32(tmp_path, family, mix):
    """fp8 UNets (TE/VAE fp16, as fp8 releases ship them) mix with any other dtype, as any source."""

    def files(i, name):
        unet_dtype = TORCH[name]
        other = torch.float16 if unet_dtype in F8 else unet_dtype
        return save(
            tiny_checkpoint(family, seed=i, dtypes=lambda k: unet_dtype if k.startswith(UNET) else other),
            tmp_path / f"{i}_{name}.safetensors",
        )

    a, b = files(1, mix[0]), files(2, mix[1])
    out = merge_to_file(recipe([a, b], family, params=(0.3,), dtype="fp32"), tmp_path / "m.safetensors",
                        progress=False)
    ta, tb, tm = load_file(a), load_file(b), load_file(out)
    assert set(tm) == set(ta)
    for key, t in tm.items():
        if not t.is_floating_point():
            assert torch.equal(t, ta[key])
            continue
        assert t.dtype == torch.float32, key
        expected = 0.7 * f64(ta[key]) + 0.3 * f64(tb[key])
        np.testing.assert_allclose(f64(t), expected, rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("family,fp8", [("sdxl", "fp8_e4m3fn"), ("sd1", "fp8_e5m2")])
def test_fp8_output_on_request(tmp_path, family, fp8):
    a = save(tiny_checkpoint(family, seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint(family, seed=2, dtype=torch.bfloat16), tmp_path / "b.safetensors")
    out = merge_to_file(recipe([a, b], family, dtype=fp8), tmp_path / "m.safetensors", progress=False)
    ta, tb, tm = load_file(a), load_file(b), load_file(out)
    want = TORCH[fp8]
    for key, t in tm.items():
        if not t.is_floating_point():
            continue
        expected = 0.5 * f64(ta[key]) + 0.5 * f64(tb[key])
        if key.startswith(UNET):  # fp8 for the UNet; one fp8 rounding step of the float64 value
            assert t.dtype == want, key
            np.testing.assert_array_equal(f64(t), f64(torch.from_numpy(expected).to(torch.float32).to(want)),
                                          err_msg=key)
        else:  # text encoders and VAE stay fp16
            assert t.dtype == torch.float16, key
            np.testing.assert_allclose(f64(t), expected, rtol=1e-3, atol=1e-3, err_msg=key)


def test_fp8_output_refuses_values_beyond_its_range(tmp_path):
    sd = tiny_checkpoint("sd1", seed=1, dtype=torch.float32)
    key = UNET + "middle_block.1.proj_in.weight"
    sd[key] = torch.full_like(sd[key], 1000.0)  # e4m3fn holds at most 448; torch's cast would saturate silently
    a = save(sd, tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2, dtype=torch.float32), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"merged key {key!r} overflows float8_e4m3fn; use --dtype fp16")):
        merge_to_file(recipe([a, b], "sd1", params=(0.1,), dtype="fp8_e4m3fn"), tmp_path / "m.safetensors",
                      progress=False)
    assert_no_output(tmp_path)


# -- keys only some sources have --------------------------------------------------------------------------

FAMILIES = ["sd1", "sd2", "sdxl", "sdxl-refiner"]


PARTIAL = [(f, lacks, which) for f in ("sd1", "sd2") for lacks in ("te", "vae", "unet") for which in (0, 1)] + [
    (f, lacks, which) for f in ("sdxl", "sdxl-refiner") for lacks, which in (("te", 1), ("vae", 0), ("unet", 0))
]


@pytest.mark.parametrize("family,lacks,which", PARTIAL)
def test_a_part_only_some_sources_have(tmp_path, family, lacks, which):
    """Refused while the part has weight for the file that lacks it (no output); carried over once not."""
    parts = tuple(p for p in ("unet", "te", "vae") if p != lacks)
    sds = [tiny_checkpoint(family, seed=1, max_dim=2), tiny_checkpoint(family, seed=2, max_dim=2)]
    sds[which] = tiny_checkpoint(family, seed=1 + which, max_dim=2, parts=parts)
    paths = [save(sd, tmp_path / f"{n}.safetensors") for sd, n in zip(sds, ("a", "b"), strict=True)]
    partial = paths[which]
    from search.commands.inspect import describe, render

    shown = describe(partial, hash=False)
    assert shown["parts"] == [p for p in ("UNet", "TE", "VAE") if p.lower() != lacks]
    assert f"(no {lacks.upper() if lacks != 'unet' else 'UNet'})" in render(shown)
    flag = {"te": "--te-alpha", "vae": "--vae-alpha"}.get(lacks)
    with pytest.raises(CheckpointError) as err:
        merge_to_file(recipe(paths, family), tmp_path / "m.safetensors", progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{partial}: has no key '"), msg
    assert "use a full checkpoint" in msg
    if flag:
        assert f"{flag} {1 - which} takes the" in msg, msg
    assert not (tmp_path / "m.safetensors").exists()
    assert_no_output(tmp_path)

    # The weight that leaves the partial file out of that part: the other file's part carried over exactly.
    other = 1 - which
    leave_out = {"te": {"te": (float(which == 0),)}, "vae": {"vae": (float(which == 0),)}}.get(lacks)
    if leave_out is None:  # the UNet: every block from the other file
        from merge_core import layout_for

        leave_out = {"blocks": {b: (float(which == 0),) for b in layout_for(family).blocks}}
    out = merge_to_file(recipe(paths, family, **leave_out), tmp_path / "m.safetensors", progress=False)
    tm, full, part = load_file(out), load_file(paths[other]), load_file(partial)
    assert set(tm) == set(full) | set(part)
    for key, t in tm.items():
        if part_of(key) == lacks:
            assert torch.equal(t, full[key]), key
        elif t.is_floating_point() and not key.endswith("position_ids"):
            expected = 0.5 * f64(full[key]) + 0.5 * f64(part[key])
            np.testing.assert_allclose(f64(t), expected, rtol=1e-3, atol=1e-3, err_msg=key)


def test_non_weight_keys_only_b_has_are_carried(tmp_path):
    a_sd = tiny_checkpoint("sd1", seed=1)
    b_sd = tiny_checkpoint("sd1", seed=2)
    b_sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 10, dtype=torch.float32)
    a, b = save(a_sd, tmp_path / "a.safetensors"), save(b_sd, tmp_path / "b.safetensors")
    out = merge_to_file(recipe([a, b], "sd1"), tmp_path / "m.safetensors", progress=False)
    assert torch.equal(load_file(out)["alphas_cumprod"], b_sd["alphas_cumprod"])


# -- the SDXL refiner ----------------------------------------------------------------------------------------


def test_refiner_is_its_own_family_with_25_blocks(tmp_path):
    from merge_core import layout_for

    path = save(tiny_checkpoint("sdxl-refiner", seed=1), tmp_path / "r.safetensors")
    ckpt = open_checkpoint(path)
    assert ckpt.family == "sdxl-refiner"
    layout = layout_for(ckpt.family)
    assert len(layout.blocks) == 25 and layout.blocks[9:12] == ("IN09", "IN10", "IN11")
    assert layout.unknown_keys(ckpt.keys()) == []
    # UNet-only and TE-only refiner files are still refiners
    unet = save(tiny_checkpoint("sdxl-refiner", seed=1, parts=("unet",)), tmp_path / "u.safetensors")
    te = save(tiny_checkpoint("sdxl-refiner", seed=1, parts=("te",)), tmp_path / "t.safetensors")
    assert open_checkpoint(unet).family == open_checkpoint(te).family == "sdxl-refiner"


def _block_of(key: str, last: int) -> str | None:
    """The block id of a UNet key, written out here independently of the layout files."""
    rest = key[len(UNET):]
    if rest.startswith(("time_embed.", "label_emb.")):
        return "IN00"
    if rest.startswith("out."):
        return f"OUT{last:02d}"
    if m := re.match(r"input_blocks\.(\d+)\.", rest):
        return f"IN{int(m.group(1)):02d}"
    if rest.startswith("middle_block."):
        return "M00"
    if m := re.match(r"output_blocks\.(\d+)\.", rest):
        return f"OUT{int(m.group(1)):02d}"
    raise AssertionError(key)


def test_two_refiners_merge_per_block_including_blocks_9_to_11(tmp_path):
    from merge_core import layout_for

    a = save(tiny_checkpoint("sdxl-refiner", seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sdxl-refiner", seed=2), tmp_path / "b.safetensors")
    blocks = layout_for("sdxl-refiner").blocks
    alphas = {blk: round(0.04 * i, 2) for i, blk in enumerate(blocks)}
    r = recipe([a, b], "sdxl-refiner", blocks={k: (v,) for k, v in alphas.items()}, te=(0.9,), vae=(0.0,),
               dtype="fp32")
    out = merge_to_file(r, tmp_path / "m.safetensors", progress=False)
    ta, tb, tm = load_file(a), load_file(b), load_file(out)
    seen = set()
    for key, t in tm.items():
        if not t.is_floating_point():
            continue
        part = part_of(key)
        alpha = alphas[_block_of(key, 11)] if part == "unet" else 0.9 if part == "te" else 0.0
        if part == "unet":
            seen.add(_block_of(key, 11))
        np.testing.assert_allclose(f64(t), (1 - alpha) * f64(ta[key]) + alpha * f64(tb[key]), rtol=1e-6,
                                   atol=1e-6, err_msg=key)
    assert seen == set(blocks)
    assert sum(1 for k in tm if re.search(r"_blocks\.(9|10|11)\.", k)) == 58


def test_refiner_and_base_do_not_mix(tmp_path):
    a = save(tiny_checkpoint("sdxl-refiner", seed=1, max_dim=2), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sdxl", seed=2, max_dim=2), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{b}: is an SDXL checkpoint but this merge is SDXL refiner")):
        merge_to_file(recipe([a, b], "sdxl-refiner"), tmp_path / "m.safetensors", progress=False)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unet_key_no_block_holds_is_refused_not_copied(tmp_path, family):
    sd = tiny_checkpoint(family, seed=1, max_dim=2)
    key = UNET + "input_blocks.12.0.weight" if family == "sd1" else UNET + "controlnet_cond_embedding.weight"
    sd[key] = torch.ones(2, 2, dtype=torch.float16)
    a = save(sd, tmp_path / "a.safetensors")
    b = save(tiny_checkpoint(family, seed=2, max_dim=2), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{a}: UNet key {key!r} belongs to no block")):
        merge_to_file(recipe([a, b], family), tmp_path / "m.safetensors", progress=False)
    assert_no_output(tmp_path)


# -- inpainting (9) and instruct-pix2pix (8) input convs ----------------------------------------------------


@pytest.mark.parametrize("family,channels", [("sd1", 9), ("sd1", 8), ("sd2", 9), ("sd2", 8), ("sdxl", 9), ("sdxl", 8)])
def test_inpainting_recipe_merges_the_first_4_channels(tmp_path, family, channels):
    """A1111's recipe inpaint + (custom - base): extra channels from the model that has them."""
    dim = 2 if family == "sdxl" else 3  # (the input conv keeps its real channel count either way)
    inpaint = save(tiny_checkpoint(family, seed=1, in_channels=channels, max_dim=dim), tmp_path / "inpaint.safetensors")
    custom = save(tiny_checkpoint(family, seed=2, max_dim=dim), tmp_path / "custom.safetensors")
    base = save(tiny_checkpoint(family, seed=3, max_dim=dim), tmp_path / "base.safetensors")
    variant = {9: "inpainting", 8: "instruct-pix2pix"}[channels]
    assert open_checkpoint(inpaint).variant == variant and open_checkpoint(custom).variant == "standard"
    r = recipe([inpaint, custom, base], family, "add-difference", (1.0,), dtype="fp32")
    out = merge_to_file(r, tmp_path / "m.safetensors", progress=False)
    ti, tc, tb, tm = load_file(inpaint), load_file(custom), load_file(base), load_file(out)
    assert tm[CONV_IN].shape[1] == channels
    np.testing.assert_allclose(f64(tm[CONV_IN][:, :4]),
                               f64(ti[CONV_IN][:, :4]) + f64(tc[CONV_IN]) - f64(tb[CONV_IN]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(f64(tm[CONV_IN][:, 4:]), f64(ti[CONV_IN][:, 4:]))
    for key, t in tm.items():
        if key != CONV_IN and t.is_floating_point():
            np.testing.assert_allclose(f64(t), f64(ti[key]) + f64(tc[key]) - f64(tb[key]), rtol=1e-6, atol=1e-6)
    assert open_checkpoint(out).variant == variant


def test_wide_input_conv_as_b_keeps_b_extras(tmp_path):
    a = save(tiny_checkpoint("sd1", seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2, in_channels=9), tmp_path / "b.safetensors")
    out = merge_to_file(recipe([a, b], "sd1", params=(0.25,), dtype="fp32"), tmp_path / "m.safetensors",
                        progress=False)
    ta, tb, tm = load_file(a), load_file(b), load_file(out)
    np.testing.assert_allclose(f64(tm[CONV_IN][:, :4]), 0.75 * f64(ta[CONV_IN]) + 0.25 * f64(tb[CONV_IN][:, :4]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(f64(tm[CONV_IN][:, 4:]), f64(tb[CONV_IN][:, 4:]))


def test_inpainting_and_pix2pix_do_not_mix(tmp_path):
    a = save(tiny_checkpoint("sd1", seed=1, in_channels=9), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2, in_channels=8), tmp_path / "b.safetensors")
    c = save(tiny_checkpoint("sd1", seed=3), tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{a}: key {CONV_IN!r} has input channels that disagree")):
        merge_to_file(recipe([a, b, c], "sd1", "add-difference", (1.0,)), tmp_path / "m.safetensors", progress=False)
    assert_no_output(tmp_path)


# -- prediction type and modelspec metadata ------------------------------------------------------------------


def test_prediction_type_and_agreed_modelspec_fields_are_carried(tmp_path):
    meta = {"modelspec.prediction_type": "v", "modelspec.architecture": "stable-diffusion-v2-768-v"}
    a = save(tiny_checkpoint("sd2", seed=1), tmp_path / "a_v.safetensors", {**meta, "modelspec.title": "A"})
    b = save(tiny_checkpoint("sd2", seed=2), tmp_path / "b_v.safetensors", {**meta, "modelspec.title": "B"})
    out = merge_to_file(recipe([a, b], "sd2"), tmp_path / "m.safetensors", progress=False)
    with safe_open(str(out), "pt") as f:
        got = f.metadata()
    assert {k: v for k, v in got.items() if k.startswith("modelspec.")} == meta
    assert (open_checkpoint(out).prediction, open_checkpoint(out).prediction_source) == ("v", "metadata")


def test_v_pred_marker_key_is_carried(tmp_path):
    sd = tiny_checkpoint("sdxl", seed=1, max_dim=2)
    sd["v_pred"] = torch.tensor([])
    a = save(sd, tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sdxl", seed=2, max_dim=2), tmp_path / "b.safetensors", {"modelspec.prediction_type": "v"})
    out = merge_to_file(recipe([a, b], "sdxl"), tmp_path / "m.safetensors", progress=False)
    assert (open_checkpoint(out).prediction, open_checkpoint(out).prediction_source) == ("v", "keys")


@pytest.mark.parametrize("a_marks", ["metadata", "key"])
def test_disagreeing_prediction_types_warn_and_follow_a(tmp_path, a_marks):
    eps = save(tiny_checkpoint("sd2", seed=1), tmp_path / "a_eps.safetensors", {"modelspec.prediction_type": "epsilon"})
    v_sd = tiny_checkpoint("sd2", seed=2)
    if a_marks == "key":
        v_sd["v_pred"] = torch.tensor([])
    v = save(v_sd, tmp_path / "b_v.safetensors", {} if a_marks == "key" else {"modelspec.prediction_type": "v"})
    with pytest.warns(CheckpointWarning, match=r"disagree on their prediction type \(a_eps\.safetensors: epsilon, "
                      r"b_v\.safetensors: v\); the merge is marked as epsilon"):
        out = merge_to_file(recipe([eps, v], "sd2"), tmp_path / "m.safetensors", progress=False)
    assert open_checkpoint(out).prediction == "epsilon"
    assert "v_pred" not in load_file(out)


# -- buffers are copied as they are, only combined tensors are checked ---------------------------------------


def test_zero_terminal_snr_buffers_are_copied_as_they_are(tmp_path):
    sd = tiny_checkpoint("sd1", seed=1)
    ac = torch.linspace(0.99, 0.0, 10, dtype=torch.float32)
    sd["alphas_cumprod"] = ac
    sd["sqrt_recip_alphas_cumprod"] = torch.sqrt(1 / ac)  # last element: inf
    sd["ztsnr"] = torch.tensor([])
    assert torch.isinf(sd["sqrt_recip_alphas_cumprod"][-1])
    a = save(sd, tmp_path / "ztsnr.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2), tmp_path / "b.safetensors")
    out = merge_to_file(recipe([a, b], "sd1"), tmp_path / "m.safetensors", progress=False)
    tm = load_file(out)
    assert torch.equal(tm["sqrt_recip_alphas_cumprod"], sd["sqrt_recip_alphas_cumprod"])
    assert "ztsnr" in tm


# -- misnamed files, other tools' metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickle-as-safetensors", "safetensors-as-ckpt"])
def test_format_comes_from_the_first_bytes(tmp_path, kind):
    sd = tiny_checkpoint("sd1", seed=1)
    if kind == "pickle-as-safetensors":
        a = tmp_path / "pickle_named.safetensors"
        torch.save({"state_dict": sd}, a)
        want = r"pickle_named\.safetensors: is a pickle file although its name ends in \.safetensors; read as pickle \(rename it to pickle_named\.ckpt\)"
    else:
        a = save(sd, tmp_path / "st_named.ckpt")
        want = r"st_named\.ckpt: is a safetensors file although its name ends in \.ckpt; read as safetensors \(rename it to st_named\.safetensors\)"
    b = save(tiny_checkpoint("sd1", seed=2), tmp_path / "b.safetensors")
    with pytest.warns(CheckpointWarning, match=want):
        out = merge_to_file(recipe([a, b], "sd1", dtype="fp32"), tmp_path / "m.safetensors", progress=False)
    tm, tb = load_file(out), load_file(b)
    for key, t in tm.items():
        if t.is_floating_point():
            np.testing.assert_allclose(f64(t), 0.5 * f64(sd[key]) + 0.5 * f64(tb[key]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", ["null", "[1, 2]", "not json", '"a string"'])
def test_malformed_merge_metadata_warns_and_is_dropped(tmp_path, value):
    a = save(tiny_checkpoint("sd1", seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2), tmp_path / "b_null_meta.safetensors", {"sd_merge_models": value})
    with pytest.warns(CheckpointWarning, match=r"b_null_meta\.safetensors: its sd_merge_models metadata is not a JSON object"):
        out = merge_to_file(recipe([a, b], "sd1"), tmp_path / "m.safetensors", progress=False)
    with safe_open(str(out), "pt") as f:
        models = json.loads(f.metadata()["sd_merge_models"])
    assert len(models) == 2 and all(isinstance(v, dict) for v in models.values())


def test_metadata_that_is_not_an_object_is_ignored_with_a_warning(tmp_path):
    good = save(tiny_checkpoint("sd1", seed=1), tmp_path / "a.safetensors")
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = ["made", "by", "another", "tool"]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bad = tmp_path / "list_meta.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.warns(CheckpointWarning, match=r"list_meta\.safetensors: its __metadata__ is a list"):
        ckpt = open_checkpoint(bad)
    assert ckpt.metadata == {}


# -- the one place that reads checkpoints: what inspect shows ---------------------------------------------------


@pytest.mark.parametrize(
    "family,variant,channels",
    [("sd1", "standard", None), ("sd1", "inpainting", 9), ("sd1", "instruct-pix2pix", 8), ("sd2", "standard", None),
     ("sd2", "inpainting", 9), ("sdxl", "standard", None), ("sdxl", "inpainting", 9),
     ("sdxl", "instruct-pix2pix", 8), ("sdxl-refiner", "standard", None)],
)
@pytest.mark.parametrize("prediction", [None, "v-key"])
def test_inspect_shows_family_variant_prediction_and_unplaced_keys(tmp_path, family, variant, channels, prediction):
    from search.commands.inspect import describe, render

    sd = tiny_checkpoint(family, seed=1, max_dim=2, in_channels=channels)
    meta = {}
    if prediction == "v-key":
        sd["v_pred"] = torch.tensor([])
    elif prediction:
        meta["modelspec.prediction_type"] = prediction.split("-")[0]
    sd["cond_stage_model.custom_scale"] = torch.ones(1)  # a key no block or component holds
    path = save(sd, tmp_path / "x.safetensors", meta)
    info = describe(path, hash=False)
    assert (info["family"], info["variant"]) == (family, variant)
    want = {None: (None, None), "v-metadata": ("v", "metadata"), "v-key": ("v", "keys"),
            "epsilon-metadata": ("epsilon", "metadata")}[prediction]
    assert (info["prediction"], info["prediction_source"]) == want
    text = render(info)
    assert f"family      {family}, {variant}" in text
    assert info["parts"] == ["UNet", "TE", "VAE"] and "parts       UNet, TE, VAE\n" in text
    if family in ("sd1", "sd2"):  # sd1/sd2 put cond_stage_model. into TE; the SDXL layouts do not
        assert info["unknown_keys"] == []
    else:
        assert info["unknown_keys"] == ["cond_stage_model.custom_scale"]
        assert "unplaced    1 key(s)" in text and "  cond_stage_model.custom_scale" in text
    assert ("v (from the file's keys)" in text) == (prediction == "v-key")
    assert ("not stated in the file" in text) == (prediction is None)
    n_unet = sum(1 for k in keyset(family) if k.startswith(UNET))
    assert sum(1 for k in sd if k.startswith(UNET)) == n_unet


@pytest.mark.parametrize("spelling,want", [("v", "v"), ("v_prediction", "v"), ("epsilon", "epsilon"),
                                           ("eps", "epsilon"), ("", None), ("flow", None)])
def test_inspect_reads_the_prediction_type_from_metadata(tmp_path, spelling, want):
    from search.commands.inspect import describe, render

    path = save(tiny_checkpoint("sd2", seed=1, max_dim=2), tmp_path / "x.safetensors",
                {"modelspec.prediction_type": spelling})
    info = describe(path, hash=False)
    assert (info["prediction"], info["prediction_source"]) == (want, "metadata" if want else None)
    if want:
        assert f"prediction  {want} (from the file's metadata)" in render(info)


# -- test gaps: the safetensors reader's byte-count check, repair's source hashes ------------------------------


def test_header_whose_byte_count_disagrees_with_the_shape_is_refused(tmp_path):
    good = save({"a": torch.zeros(4, dtype=torch.float16), "b": torch.ones(2, dtype=torch.float16)},
                tmp_path / "good.safetensors")
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["a"]["shape"] = [3]  # 6 bytes for a span of 8: a corrupt header, though every offset lies in the file
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bad = tmp_path / "bad_header.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(CheckpointError, match=re.escape(f"{bad}: key 'a' has 8 bytes for shape (3,); the file is corrupt")):
        open_checkpoint(bad)


def test_repair_metadata_holds_the_true_source_hashes(tmp_path):
    from merge_core import repair_to_file

    a = save(tiny_checkpoint("sd1", seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2), tmp_path / "b.safetensors")
    out = tmp_path / "r.safetensors"
    repair_to_file(a, b, out, rank=1, progress=False)
    with safe_open(str(out), "pt") as f:
        info = json.loads(f.metadata()["mergesearch_repair"])
    assert info["a"]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert info["b"]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()


def test_warnings_do_not_fire_for_ordinary_files(tmp_path):
    a = save(tiny_checkpoint("sd1", seed=1), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2), tmp_path / "b.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        merge_to_file(recipe([a, b], "sd1"), tmp_path / "m.safetensors", progress=False)


# -- per-tensor (non-linear) methods follow the same rules ------------------------------------------------------


@pytest.mark.parametrize("method,n,params", [("slerp", 2, (0.3,)), ("train-difference", 3, (1.0,)),
                                             ("ties", 3, (1.0, 1.0, 0.5, 1.0))])
def test_per_tensor_methods_merge_the_first_4_channels_and_keep_the_extras(tmp_path, method, n, params):
    """The wide file's first 4 channels merge exactly as a 4-channel copy of it would; the rest is kept."""
    wide_sd = tiny_checkpoint("sd1", seed=1, in_channels=9)
    narrow_sd = {**wide_sd, CONV_IN: wide_sd[CONV_IN][:, :4].clone()}
    wide = save(wide_sd, tmp_path / "inpaint.safetensors")
    narrow = save(narrow_sd, tmp_path / "narrow.safetensors")
    others = [save(tiny_checkpoint("sd1", seed=2 + i), tmp_path / f"o{i}.safetensors") for i in range(n - 1)]
    got = load_file(merge_to_file(recipe([wide, *others], "sd1", method, params, dtype="fp32"),
                                  tmp_path / "m.safetensors", progress=False))
    ref = load_file(merge_to_file(recipe([narrow, *others], "sd1", method, params, dtype="fp32"),
                                  tmp_path / "ref.safetensors", progress=False))
    assert got[CONV_IN].shape[1] == 9
    np.testing.assert_array_equal(got[CONV_IN][:, :4].numpy(), ref[CONV_IN].numpy())
    np.testing.assert_array_equal(f64(got[CONV_IN][:, 4:]), f64(wide_sd[CONV_IN][:, 4:]))


def test_per_tensor_method_refuses_a_source_lacking_a_part(tmp_path):
    base = save(tiny_checkpoint("sd1", seed=1, max_dim=2), tmp_path / "base.safetensors")
    unet_only = save(tiny_checkpoint("sd1", seed=2, max_dim=2, parts=("unet",)), tmp_path / "unet_only.safetensors")
    full = save(tiny_checkpoint("sd1", seed=3, max_dim=2), tmp_path / "full.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{unet_only}: has no key 'cond_stage_model.")):
        merge_to_file(recipe([base, unet_only, full], "sd1", "ties", (1.0, 1.0, 0.5, 1.0)), tmp_path / "m.safetensors",
                      progress=False)
    assert_no_output(tmp_path)


def test_metadata_values_that_are_not_strings_are_read_as_json(tmp_path):
    good = save(tiny_checkpoint("sd1", seed=1, max_dim=2), tmp_path / "a.safetensors")
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = {"ss_steps": 1200, "ss_tags": {"1girl": 3}, "modelspec.prediction_type": "v"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    odd = tmp_path / "kohya_meta.safetensors"
    odd.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    ckpt = open_checkpoint(odd)
    assert ckpt.metadata == {"ss_steps": "1200", "ss_tags": '{"1girl": 3}', "modelspec.prediction_type": "v"}
    b = save(tiny_checkpoint("sd1", seed=2, max_dim=2), tmp_path / "b.safetensors")
    merge_to_file(recipe([odd, b], "sd1"), tmp_path / "m.safetensors", progress=False)
