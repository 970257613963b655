"""Tiny random-weight models of every family: the shipped configs with narrow channels, same key layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmark.renderer import FAMILY_DIR, Renderer
from benchmark.single_file import to_single_file

_TE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
       "projection_dim": 32}
# Channel ratios kept (1:2:4:4), so the same blocks change width and carry skip/shortcut convolutions.
_VAE = {"block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8}
_UNET_SD = {"block_out_channels": [32, 64, 128, 128], "norm_num_groups": 8, "cross_attention_dim": 32,
            "sample_size": 8}

# Narrow every module but keep blocks, layers per block and attention placement: the single-file
# key layout (and so the conversion path) is the real family's.
TINY = {
    "sd1": {"unet": {**_UNET_SD, "attention_head_dim": 8}, "text_encoder": _TE, "vae": _VAE},
    "sd2": {"unet": {**_UNET_SD, "attention_head_dim": [2, 4, 8, 8]}, "text_encoder": _TE, "vae": _VAE},
    "sdxl": {
        "unet": {"block_out_channels": [32, 64, 128], "norm_num_groups": 8, "attention_head_dim": [2, 4, 8],
                 "transformer_layers_per_block": [1, 2, 2], "cross_attention_dim": 32 + 48,
                 "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 48,
                 "sample_size": 8},
        # The second encoder is wider than the first, as in SDXL (768 vs 1280): diffusers tells the two
        # apart by width when it loads a single file.
        "text_encoder": _TE, "text_encoder_2": {**_TE, "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48},
        "vae": _VAE,
    },
    "toyworld": {},
}


def tiny_config_dir(family: str, root: Path) -> Path:
    """Copy configs/families/<family> to `root` with the tiny overrides written into its JSON files."""
    dst = root / f"{family}-tiny"
    if dst.exists():
        return dst
    shutil.copytree(FAMILY_DIR / family, dst)
    for module, patch in TINY[family].items():
        f = dst / module / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), **patch}, indent=1))
    return dst


def random_renderer(config_dir: Path, seed: int) -> Renderer:
    torch.manual_seed(seed)
    return Renderer(config_dir)


def random_single_file(renderer: Renderer, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for `renderer`'s topology in the family's single-file layout (like a real file)."""
    g = torch.Generator().manual_seed(seed)

    def rand(key: str, v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point():
            return v
        scale = 1.0 if "norm" in key and key.endswith("weight") else 0.0  # norms near 1, the rest near 0
        return scale + 0.05 * torch.randn(v.shape, generator=g)

    modules = {name: {k: rand(k, v) for k, v in m.state_dict().items()} for name, m in renderer.modules.items()}
    sd = to_single_file(modules, renderer.family, renderer.configs)
    if renderer.family == "sd2":
        # SD 2.x files hold OpenCLIP's full stack (one block more than diffusers uses) and its projection.
        te = renderer.configs["text_encoder"]
        last = int(te["num_hidden_layers"]) - 1
        pre = "cond_stage_model.model.transformer.resblocks."
        for k in [k for k in sd if k.startswith(f"{pre}{last}.")]:
            sd[k.replace(f"{pre}{last}.", f"{pre}{last + 1}.")] = torch.randn(sd[k].shape, generator=g)
        w = int(te["hidden_size"])
        sd["cond_stage_model.model.text_projection"] = torch.randn(w, w, generator=g)
        sd["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    if renderer.family == "sdxl":
        sd["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6)  # in real files, unused
    return sd


def save_checkpoint(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype = torch.float16) -> Path:
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, str(path))
    return path
