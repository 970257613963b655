"""End-to-end merges of tiny checkpoints with real SD1 key names, checked key by key."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sd_keysets import tiny_state_dict

from merge_core import (
    CheckpointError,
    Recipe,
    Source,
    file_sha256,
    layout_for,
    merge_to_file,
    open_checkpoint,
    save_safetensors,
)


def reference(recipe: Recipe, sds: list[dict]) -> dict[str, torch.Tensor]:
    """Independent per-key computation on whole tensors: c0*x0 then += c_i*x_i (fp32), cast once."""
    layout = layout_for(recipe.family)
    out_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[recipe.dtype]
    coeffs = recipe.coefficients()
    out = {}
    for key, t in sds[0].items():
        block = layout.block_of(key)
        if block is None:
            out[key] = t
            continue
        acc = sds[0][key].float() * coeffs[block][0]
        for sd, c in zip(sds[1:], coeffs[block][1:], strict=True):
            acc.add_(sd[key].float(), alpha=c)
        out[key] = acc.to(out_dtype)
    return out


def write_sources(tmp_path, n, dtype=torch.float16):
    sds, srcs = [], []
    for i in range(n):
        sd = tiny_state_dict("sd1", seed=10 + i, dtype=dtype)
        p = save_safetensors(sd, tmp_path / f"m{i}.safetensors")
        sds.append(sd)
        srcs.append(Source.from_path(p))
    return sds, srcs


@pytest.mark.parametrize(
    ("method", "n", "params", "dtype"),
    [
        ("weighted-sum", 2, (0.3,), "fp16"),
        ("add-difference", 3, (0.7,), "fp32"),
        ("triple-sum", 3, (0.2, 0.3), "bf16"),
        ("sum-twice", 3, (0.4, 0.25), "fp16"),
        ("affine", 4, (0.5, -0.2, 0.4), "fp32"),
    ],
)
def test_every_output_tensor_matches_an_independent_computation(tmp_path, method, n, params, dtype):
    sds, srcs = write_sources(tmp_path, n)
    blocks = {b: tuple(p + 0.01 * i for p in params) for i, b in enumerate(layout_for("sd1").blocks)}
    recipe = Recipe.uniform(
        "sd1", method, srcs, params, blocks=blocks, te=params, vae=(0.0,) * len(params), dtype=dtype
    )
    out = merge_to_file(recipe, tmp_path / "out.safetensors", progress=False)
    got = load_file(out)
    ref = reference(recipe, sds)
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].dtype == ref[key].dtype, key
        assert torch.equal(got[key], ref[key]), key
    # and against the plain textbook formula, to within one rounding of the output dtype
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    c = recipe.coefficients()["M00"]
    naive = sum(ci * sd[key].float() for ci, sd in zip(c, sds, strict=True))
    tol = {"fp16": 1e-3, "bf16": 8e-3, "fp32": 1e-6}[dtype] * (1 + naive.abs().max())
    assert (got[key].float() - naive).abs().max() <= tol
    # VAE weight 0 everywhere: the VAE is model A's (bit for bit when the dtype is kept)
    vae = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(got[vae], sds[0][vae].to(got[vae].dtype))


def test_metadata_has_recipe_hashes_and_a1111_fields(tmp_path):
    sds, srcs = write_sources(tmp_path, 2)
    recipe = Recipe.uniform("sd1", "weighted-sum", srcs, (0.3,))
    out = merge_to_file(recipe, tmp_path / "out.safetensors", progress=False, extra_metadata={"note": "hi"})
    meta = safe_open(out, "pt").metadata()
    replay = Recipe.from_json(meta["mergesearch_recipe"])
    assert replay == recipe
    a1111 = json.loads(meta["sd_merge_recipe"])
    assert a1111["primary_model_hash"] == file_sha256(srcs[0].path)
    assert a1111["multiplier"] == 0.3 and a1111["interp_method"] == "weighted-sum"
    models = json.loads(meta["sd_merge_models"])
    assert set(models) == {file_sha256(s.path) for s in srcs}
    assert all(len(m["legacy_hash"]) == 8 for m in models.values())
    assert meta["note"] == "hi" and meta["format"] == "pt"
    # the written file is itself a valid checkpoint of the family
    assert open_checkpoint(out).family == "sd1"


def test_hashes_are_filled_in_when_the_recipe_has_none(tmp_path):
    _, srcs = write_sources(tmp_path, 2)
    bare = [Source(path=s.path) for s in srcs]
    out = merge_to_file(
        Recipe.uniform("sd1", "weighted-sum", bare, (0.5,)), tmp_path / "o.safetensors", progress=False
    )
    replay = Recipe.from_json(safe_open(out, "pt").metadata()["mergesearch_recipe"])
    assert [s.sha256 for s in replay.sources] == [s.sha256 for s in srcs]


def test_held_blocks_are_byte_copies_and_ema_is_dropped(tmp_path):
    sd = tiny_state_dict("sd1", seed=1)
    sd_ema = {
        **sd,
        "model_ema.decay": torch.tensor(0.999),
        "model_ema.num_updates": torch.tensor(5, dtype=torch.int32),
    }
    pa = save_safetensors(sd_ema, tmp_path / "a.safetensors")
    pb = save_safetensors(tiny_state_dict("sd1", seed=2), tmp_path / "b.safetensors")
    recipe = Recipe.uniform(
        "sd1", "weighted-sum", [Source(path=str(pa)), Source(path=str(pb))], (1.0,), te=(0.0,)
    )
    got = load_file(merge_to_file(recipe, tmp_path / "o.safetensors", progress=False))
    assert "model_ema.decay" not in got
    te = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    assert torch.equal(got[te], sd[te])
    kept = recipe.model_copy(update={"keep_ema": True})
    got = load_file(merge_to_file(kept, tmp_path / "o2.safetensors", progress=False))
    assert got["model_ema.num_updates"].item() == 5


def test_source_that_changed_since_the_recipe_is_refused(tmp_path):
    _, srcs = write_sources(tmp_path, 2)
    stale = [srcs[0], srcs[1].model_copy(update={"sha256": "f" * 64})]
    with pytest.raises(CheckpointError, match="m1.safetensors: sha256 .* differs from the recipe"):
        merge_to_file(
            Recipe.uniform("sd1", "weighted-sum", stale, (0.5,)), tmp_path / "o.safetensors", progress=False
        )
    assert not (tmp_path / "o.safetensors").exists()


def test_existing_output_needs_overwrite(tmp_path):
    _, srcs = write_sources(tmp_path, 2)
    recipe = Recipe.uniform("sd1", "weighted-sum", srcs, (0.5,))
    out = merge_to_file(recipe, tmp_path / "o.safetensors", progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        merge_to_file(recipe, out, progress=False)
    merge_to_file(recipe, out, progress=False, overwrite=True)
