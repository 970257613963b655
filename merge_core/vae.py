"""A separate VAE to bake into a merged checkpoint (A1111's and SuperMerger's "bake VAE").

Accepted: a single-file VAE with or without the ``first_stage_model.`` prefix
(``*.vae.safetensors``, ``*.vae.pt`` through weights-only loading), a diffusers VAE folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``), a diffusers pipeline folder
(its ``vae/``), or a diffusers-named VAE file. The VAE is returned as a Checkpoint under the
model's single-file keys, after checking that it holds every VAE weight of the model with the
model's shapes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import Checkpoint, open_checkpoint
from .diffusers_folder import is_diffusers_folder, is_vae_folder, vae_component
from .diffusers_names import VAE_PREFIX, single_file_name
from .errors import CheckpointError
from .layout import layout_for

_LDM_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_IGNORED = ("loss.",)  # training leftovers in original .pt VAEs (discriminator, LPIPS)


def open_vae(path: str | os.PathLike, model: Checkpoint) -> Checkpoint:
    """The VAE at ``path`` under ``model``'s VAE keys; CheckpointError naming the file and key when it
    does not fit (another family or size, missing weights, not a VAE)."""
    p = Path(path)
    if p.is_dir():
        if not (is_diffusers_folder(p) or is_vae_folder(p)):
            raise CheckpointError(
                f"{p}: neither a diffusers VAE folder (config.json with AutoencoderKL) nor a pipeline folder"
            )
        comp, config = vae_component(p)
        vae = _renamed(p, comp, lambda k: _diffusers_key(k, config))
    else:
        comp = open_checkpoint(p)
        vae = _renamed(p, comp, lambda k: _file_key(k, comp))
    _check_fits(vae, model)
    return vae


def _diffusers_key(key: str, config: dict) -> str:
    return single_file_name("vae", key, "sd1", {"vae": config})


def _file_key(key: str, comp: Checkpoint) -> str | None:
    if key.startswith(VAE_PREFIX):
        return key
    if key.startswith(_IGNORED):
        return None
    if key.startswith(_LDM_PARTS):
        if re.match(r"(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_norm_out)", key):
            n_up = len({m.group(1) for k in comp.keys() if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))})
            return _diffusers_key(key, {"up_block_types": [None] * n_up})
        return VAE_PREFIX + key
    raise CheckpointError(
        f"{comp.path}: key {key!r} is not a VAE weight (expected encoder.*, decoder.*, quant_conv.*, "
        "post_quant_conv.*, with or without first_stage_model.); is this a VAE file?"
    )


def _renamed(path: Path, comp: Checkpoint, rename) -> Checkpoint:
    raw: dict[str, str] = {}
    for key in comp.keys():
        new = rename(key)
        if new is None:
            continue
        raw[new] = key
    if not raw:
        raise CheckpointError(f"{path}: holds no VAE weights")
    reshape = {}
    for new, old in raw.items():
        # diffusers keeps the mid-block attention as linear layers; ldm as 1x1 convolutions
        if ".mid.attn_1." in new and len(comp.shape(old)) == 2 and new.endswith(".weight"):
            reshape[new] = (*comp.shape(old), 1, 1)

    def read(key: str):
        t = comp.tensor(raw[key])
        return t.reshape(reshape[key]) if key in reshape else t

    return Checkpoint(
        path, {k: k for k in raw}, {k: reshape.get(k, tuple(comp.shape(o))) for k, o in raw.items()},
        {k: comp.dtype(o) for k, o in raw.items()}, dict(comp.metadata), read, format="vae",
    )


def _check_fits(vae: Checkpoint, model: Checkpoint) -> None:
    layout = layout_for(model.family)
    wanted = [k for k in model.keys() if layout.block_of(k) == "VAE" and model.dtype(k).is_floating_point]
    if not wanted:
        raise CheckpointError(f"{model.path}: has no VAE weights to replace; bake a VAE into a full checkpoint")
    for key in wanted:
        if key not in vae:
            raise CheckpointError(
                f"{vae.path}: has no VAE weight {key!r} that the model has; is it a VAE of another family "
                "(or a partial file)? Use a VAE made for this model"
            )
        if vae.shape(key) != model.shape(key):
            raise CheckpointError(
                f"{vae.path}: VAE weight {key!r} has shape {vae.shape(key)} but the model's is {model.shape(key)}; "
                "it is a VAE of another family or size — use a VAE made for this model"
            )
