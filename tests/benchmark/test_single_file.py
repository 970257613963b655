"""The shipped family configs against the real single-file key sets (tests/data, from sd-mecha)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch

from benchmark.renderer import FAMILY_DIR, family_of, load_configs
from benchmark.single_file import single_file_name, to_diffusers

DATA = Path(__file__).resolve().parents[1] / "data"
_PARTS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def real_keys(family: str) -> dict[str, tuple[list[int], str]]:
    data = json.loads(gzip.open(DATA / f"keys_{family}.json.gz").read())
    return {k: (shape, dtype) for k, (shape, dtype, _opt) in data["keys"].items() if k.startswith(_PARTS)}


def meta_modules(family: str):
    """Full-size modules from the shipped configs, on the meta device (no memory, no init cost)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = load_configs(FAMILY_DIR / family)
    clean = {k: {a: b for a, b in v.items() if a != "architectures"} for k, v in configs.items()}
    with torch.device("meta"):
        modules = {"unet": diffusers.UNet2DConditionModel.from_config(configs["unet"]),
                   "vae": diffusers.AutoencoderKL.from_config(configs["vae"]),
                   "text_encoder": CLIPTextModel(CLIPTextConfig(**clean["text_encoder"]))}
        if "text_encoder_2" in configs:
            modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**clean["text_encoder_2"]))
    return configs, modules


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_shipped_config_fits_a_real_checkpoint_exactly(family):
    """A real-size file (every key and shape of the family) converts through diffusers' converters onto
    modules built from configs/families/<family> with no key missing, left over or of another shape."""
    configs, modules = meta_modules(family)
    assert family_of(configs) == family
    keys = real_keys(family)
    sd = {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in keys.items()}
    converted = to_diffusers(sd, family, modules, configs)
    assert set(converted) == set(modules)
    for name, module in modules.items():
        live = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in converted[name].items()}
        assert set(got) == set(live), (name, sorted(set(live) ^ set(got))[:5])
        assert got == live, name
        for k in live:  # and every diffusers name maps back to a real single-file key
            assert single_file_name(name, k, family, configs) in keys, (name, k)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_test_models_keep_the_real_key_layout(family, tmp_path):
    """The narrowed test models differ from real files only in widths and depths, never in key names."""
    from bench_tiny import random_renderer, random_single_file, tiny_config_dir

    renderer = random_renderer(tiny_config_dir(family, tmp_path), seed=0)
    tiny = set(random_single_file(renderer, seed=1))
    real = set(real_keys(family))
    assert tiny <= real, sorted(tiny - real)[:5]
    te_layers = int(renderer.configs["text_encoder"]["num_hidden_layers"]) + (family == "sd2")

    def in_tiny_depth(key: str) -> bool:
        m = re.search(r"(?:layers|resblocks)\.(\d+)\.", key)
        if m and key.startswith(("cond_stage_model.", "conditioner.")) and int(m.group(1)) >= te_layers:
            return False
        m = re.search(r"transformer_blocks\.(\d+)\.", key)
        return not (m and int(m.group(1)) >= 2)

    expected = {k for k in real if in_tiny_depth(k)}
    if family == "sd2":
        expected.discard("cond_stage_model.model.attn_mask")  # only some OpenCLIP exports carry the mask
    assert expected <= tiny, sorted(expected - tiny)[:5]
