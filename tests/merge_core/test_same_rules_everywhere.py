"""One reading of a checkpoint (merge_core.open_checkpoint: keys, dtypes, family, variant) decides for
merge, repair, the benchmark's renderer loading and the search's source loading alike."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_keysets import tiny_checkpoint

from benchmark import BenchmarkError
from benchmark.renderer import guess_config, read_checkpoint
from merge_core import Recipe, Source, merge_to_file, open_checkpoint, repair_to_file
from search.config import ConfigError, parse_config
from search.runner import prepare
from search.workers import EvaluatorSpec

UNET = "model.diffusion_model."


def save(sd, path, metadata=None):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def search_prepare(tmp_path, models, vae=None):
    cfg = {
        "name": "t",
        "models": [{"name": n, "path": str(p)} for n, p in models.items()],
        "space": {"groups": {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"]},
                  "components": {"TE": "search", "VAE": vae or next(iter(models))}},
        "objective": {"vocabulary": "toyworld", "n": 4, "m": 2},
        "budget": {"trials": 2},
        "runs_dir": str(tmp_path / "runs"),
    }
    return prepare(parse_config(cfg), evaluator=EvaluatorSpec(factory="search_fakes:FakeEvaluator"))


VARIANTS = {
    "refiner": (lambda: tiny_checkpoint("sdxl-refiner", seed=1, max_dim=2), "is an SDXL refiner"),
    "inpainting": (lambda: tiny_checkpoint("sd1", seed=1, in_channels=9), "is an inpainting model"),
    "pix2pix": (lambda: tiny_checkpoint("sdxl", seed=1, max_dim=2, in_channels=8), "is an instruct-pix2pix model"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_the_benchmark_cannot_render_are_refused_by_name_everywhere(tmp_path, variant):
    build, message = VARIANTS[variant]
    path = save(build(), tmp_path / f"{variant}.safetensors")
    for reader in (guess_config, read_checkpoint):
        with pytest.raises(BenchmarkError, match=re.escape(f"{path}: {message}")):
            reader(path)
    other = save(tiny_checkpoint("sd1", seed=2), tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=re.escape(f"models.{variant}: {path}: {message}")):
        search_prepare(tmp_path, {"other": other, variant: path})


def test_an_incomplete_diffusers_folder_gets_the_same_message_from_search_and_benchmark(tmp_path):
    # diffusers folders are read as models (merge_core.diffusers_folder); an incomplete one is refused by name
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    message = f"{folder}: unet/config.json is missing; the diffusers folder is incomplete"
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        read_checkpoint(folder)
    other = save(tiny_checkpoint("sd1", seed=2), tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=re.escape(f"models.pipe: {message}")):
        search_prepare(tmp_path, {"other": other, "pipe": folder})


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_toy_world_model_loads_into_the_renderer_and_the_search(tmp_path, fp8):
    """A toy-world checkpoint with an fp8 UNet: the renderer gets the fp8 values, upcast; search accepts it."""
    from benchmark import Renderer
    from benchmark.toyworld.checkpoint_io import random_checkpoint

    src = random_checkpoint(tmp_path / "toy.safetensors", seed=0)
    sd = load_file(src)
    sd8 = {k: v.to(fp8) if k.startswith(UNET) and v.is_floating_point() else v for k, v in sd.items()}
    path = save(sd8, tmp_path / "toy_fp8.safetensors")
    assert guess_config(path) == "toyworld"
    renderer = Renderer("toyworld")
    renderer.load_checkpoint(path)
    unet = renderer.modules["unet"].state_dict()
    conv = unet["conv_in.weight"]
    np.testing.assert_array_equal(conv.double().numpy(), sd8[UNET + "input_blocks.0.0.weight"].double().numpy())
    prepared = search_prepare(tmp_path, {"base": src, "fp8": path})
    assert prepared.family == "sd1"


def test_repair_reads_fp8_sources_and_refiners_like_merge(tmp_path):
    a = save(tiny_checkpoint("sdxl-refiner", seed=1, max_dim=2,
                             dtypes=lambda k: torch.float8_e4m3fn if k.startswith(UNET) else torch.float16),
             tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sdxl-refiner", seed=2, max_dim=2), tmp_path / "b.safetensors")
    out = tmp_path / "r.safetensors"
    repair_to_file(a, b, out, rank=8, dtype="fp32", progress=False)  # rank >= every side: the result is B
    ta, tb, tr = load_file(a), load_file(b), load_file(out)
    assert open_checkpoint(out).family == "sdxl-refiner"
    for key, t in tr.items():
        if t.is_floating_point() and t.dim() >= 1:
            np.testing.assert_allclose(t.double().numpy(), tb[key].double().numpy(), rtol=1e-6, atol=1e-6)
    # the same pair merges with the same reading of families and keys
    recipe = Recipe.uniform("sdxl-refiner", "weighted-sum", [Source(path=str(a)), Source(path=str(b))], (0.5,))
    merged = load_file(merge_to_file(recipe, tmp_path / "m.safetensors", progress=False))
    assert set(merged) == set(tr) == set(ta)


def test_repair_refuses_a_unet_key_no_block_holds(tmp_path):
    from merge_core import CheckpointError

    sd = tiny_checkpoint("sd1", seed=1, max_dim=2)
    key = UNET + "input_blocks.12.0.weight"
    sd[key] = torch.ones(2, 2, dtype=torch.float16)
    a = save(sd, tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2, max_dim=2), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{a}: UNet key {key!r} belongs to no block")):
        repair_to_file(a, b, tmp_path / "r.safetensors", progress=False)
    assert not (tmp_path / "r.safetensors").exists()


def test_search_refuses_a_source_lacking_a_part(tmp_path):
    base = save(tiny_checkpoint("sd1", seed=1, max_dim=2), tmp_path / "base.safetensors")
    no_vae = save(tiny_checkpoint("sd1", seed=2, max_dim=2, parts=("unet", "te")), tmp_path / "no_vae.safetensors")
    for vae in ("search", "base"):  # even held from the model that has it: the Mixer loads every part of every source
        with pytest.raises(ConfigError, match=re.escape(f"models.novae: {no_vae} has no key 'first_stage_model.")) as err:
            search_prepare(tmp_path, {"base": base, "novae": no_vae}, vae=vae)
        assert "(VAE) that model 'base' has" in str(err.value) and "use a full checkpoint" in str(err.value)


@pytest.mark.parametrize("fp8", ["fp8_e4m3fn", "fp8_e5m2"])
def test_repair_writes_fp8_like_merge(tmp_path, fp8):
    """fp8 output holds the UNet only, in repair as in merge; values = fp8(A + rank-r(B - A)) for rank >= side."""
    a = save(tiny_checkpoint("sd1", seed=1, max_dim=2), tmp_path / "a.safetensors")
    b = save(tiny_checkpoint("sd1", seed=2, max_dim=2, dtype=torch.bfloat16), tmp_path / "b.safetensors")
    out = tmp_path / "r.safetensors"
    repair_to_file(a, b, out, rank=8, dtype=fp8, progress=False)  # full rank: the result is B
    tb, tr = load_file(b), load_file(out)
    want = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fp8]
    for key, t in tr.items():
        if not t.is_floating_point():
            continue
        if key.startswith(UNET):
            assert t.dtype == want, key
            np.testing.assert_array_equal(t.double().numpy(), tb[key].float().to(want).double().numpy())
        else:
            assert t.dtype == torch.float16, key
            np.testing.assert_array_equal(t.double().numpy(), tb[key].float().half().double().numpy())
