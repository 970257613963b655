"""Baking a separate VAE: every accepted form gives the VAE file's tensors, nothing else changes,
the VAE's sha256 is in the metadata, and VAEs that do not fit are refused before any write."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sd_keysets import tiny_state_dict

from benchmark.toyworld import CONFIG_DIR, zoo
from merge_core import CheckpointError, Recipe, Source, merge_to_file

PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def world():
    z = zoo()
    recipe = Recipe.uniform("sd1", "weighted-sum", [Source(path=str(z["base"])), Source(path=str(z["colorist"]))],
                            (0.5,), dtype="fp32")
    vae = {k: v for k, v in load_file(z["sizer"]).items() if k.startswith(PREFIX)}
    return z, recipe, vae


def _vae_forms(tmp_path, vae):
    """The forms users have: prefixed .safetensors, bare .safetensors, .pt, a diffusers VAE folder."""
    prefixed = tmp_path / "a.vae.safetensors"
    save_file(vae, str(prefixed))
    bare = tmp_path / "b.vae.safetensors"
    save_file({k.removeprefix(PREFIX): v for k, v in vae.items()}, str(bare))
    pt = tmp_path / "c.vae.pt"
    torch.save({"state_dict": {k.removeprefix(PREFIX): v for k, v in vae.items()}}, pt)
    # diffusers' own converter names the folder's weights (independent of our table)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = json.loads((CONFIG_DIR / "vae" / "config.json").read_text())
    folder = tmp_path / "vae-diffusers"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in convert_ldm_vae_checkpoint(vae, config).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return {"prefixed": prefixed, "bare": bare, "pt": pt, "folder": folder}


def test_every_vae_form_bakes_the_vae_tensors(tmp_path, world):
    z, recipe, vae = world
    plain = merge_to_file(recipe, tmp_path / "plain.safetensors", progress=False)
    ref = load_file(plain)
    for form, path in _vae_forms(tmp_path, vae).items():
        out = merge_to_file(recipe, tmp_path / f"{form}.safetensors", progress=False, vae=path)
        got = load_file(out)
        assert set(got) == set(ref), form
        for k, v in got.items():
            if k.startswith(PREFIX):
                assert torch.equal(v, vae[k].float()), (form, k)  # the VAE file's tensors exactly
            else:
                assert torch.equal(v, ref[k]), (form, k)  # the merge is untouched
        with safe_open(str(out), "pt") as f:
            info = json.loads(f.metadata()["mergesearch_vae"])
        if path.is_file():
            assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            assert len(info["sha256"]) == 64


def test_vae_that_does_not_fit_is_refused_before_writing(tmp_path, world):
    z, recipe, vae = world
    out = tmp_path / "out.safetensors"
    # the real SD1 VAE's key names with other shapes: a VAE of another family or size
    other = {k: v for k, v in tiny_state_dict("sd1", max_dim=3).items() if k.startswith(PREFIX)}
    save_file(other, str(tmp_path / "other.vae.safetensors"))
    with pytest.raises(CheckpointError, match="another family or size"):
        merge_to_file(recipe, out, progress=False, vae=tmp_path / "other.vae.safetensors")
    partial = dict(list(vae.items())[:-3])
    save_file(partial, str(tmp_path / "partial.vae.safetensors"))
    with pytest.raises(CheckpointError, match="has no VAE weight"):
        merge_to_file(recipe, out, progress=False, vae=tmp_path / "partial.vae.safetensors")
    with pytest.raises(CheckpointError, match="not a VAE weight"):
        merge_to_file(recipe, out, progress=False, vae=z["sizer"].parent / "tagger.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a diffusers VAE folder"):
        merge_to_file(recipe, out, progress=False, vae=tmp_path / "empty")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
