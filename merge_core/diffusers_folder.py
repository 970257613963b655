"""Diffusers folders (``model_index.json``, ``unet/``, ``text_encoder/``, ``vae/``) read as
single-file checkpoints.

Every component's weights are renamed to the single-file (ldm) keys by the one conversion
table in merge_core.diffusers_names, so family detection, block maps, merges, LoRAs and
hashes treat a folder exactly like a file. Tensors are read lazily from the components'
memory-mapped safetensors (or .bin through weights-only loading); the few keys whose layout
differs are rebuilt on read: OpenCLIP q/k/v are concatenated into ``in_proj_weight``, its
``text_projection`` is transposed, the VAE's mid-block attention becomes 1x1 convolutions,
and CLIP-L gets its ``position_ids`` buffer.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .family import Family

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
TEXT_ENCODERS = {Family.SD1: ("text_encoder",), Family.SD2: ("text_encoder",),
                 Family.SDXL: ("text_encoder", "text_encoder_2")}


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


def is_vae_folder(path: str | os.PathLike) -> bool:
    """A diffusers AutoencoderKL folder (``config.json`` + weights), e.g. ``stabilityai/sd-vae-ft-mse``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name") == "AutoencoderKL"
    except ValueError:
        return False


def component_file(folder: str | os.PathLike, name: str) -> Path:
    """The weights file of component ``name`` (CheckpointError naming what is missing)."""
    sub = Path(folder) / name
    if not sub.is_dir():
        raise CheckpointError(
            f"{folder}: diffusers folder has no {name}/ component; the folder is incomplete — "
            "copy the whole model folder (or re-save it with save_pretrained)"
        )
    for f in WEIGHT_FILES:
        if (sub / f).is_file():
            return sub / f
    if any(sub.glob("*.index.json")):
        raise CheckpointError(f"{sub}: weights are sharded; re-save the model with a larger max_shard_size")
    raise CheckpointError(
        f"{sub}: no weights file ({', '.join(WEIGHT_FILES[:2])}); the diffusers folder is incomplete — "
        "re-download it or re-save it with save_pretrained"
    )


def _config(folder: Path, name: str) -> dict:
    if not (folder / name).is_dir():
        raise CheckpointError(
            f"{folder}: diffusers folder has no {name}/ component; the folder is incomplete — "
            "copy the whole model folder (or re-save it with save_pretrained)"
        )
    f = folder / name / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{folder}: {name}/config.json is missing; the diffusers folder is incomplete")
    return json.loads(f.read_text())


def folder_family(folder: Path, configs: dict[str, dict]) -> Family:
    """SDXL has two text encoders; SD2 an OpenCLIP one (gelu); SD1 CLIP ViT-L (quick_gelu)."""
    if "text_encoder_2" in configs:
        return Family.SDXL
    if configs["text_encoder"].get("hidden_act") == "gelu":
        return Family.SD2
    return Family.SD1


def open_diffusers_folder(path: str | os.PathLike):
    """A diffusers pipeline folder as a lazy Checkpoint under single-file keys."""
    from .checkpoint import Checkpoint, open_checkpoint

    folder = Path(path)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except ValueError as exc:
        raise CheckpointError(f"{folder}/model_index.json: not valid JSON ({exc}); re-save the folder") from None
    if "unet" not in index:
        raise CheckpointError(
            f"{folder}: model_index.json names no unet; only Stable Diffusion (SD1, SD2, SDXL) pipelines are supported"
        )
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if "text_encoder_2" in index else [])
    configs = {n: _config(folder, n) for n in names}
    family = folder_family(folder, configs)
    comps = {n: open_checkpoint(component_file(folder, n)) for n in names}
    return _as_checkpoint(folder, family, comps, configs, Checkpoint)


def vae_component(path: Path):
    """(Checkpoint of the VAE weights, its config) of a VAE folder or a pipeline folder's vae/."""
    from .checkpoint import open_checkpoint

    base = path / "vae" if is_diffusers_folder(path) else path
    return open_checkpoint(component_file(base.parent, base.name)), json.loads((base / "config.json").read_text())


def _as_checkpoint(path: Path, family: Family, comps: dict, configs: dict, checkpoint_cls):
    from .diffusers_names import OPEN_CLIP, TE_PREFIXES, single_file_name

    readers: dict[str, object] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for name, comp in comps.items():
        open_clip = (family.value, name) in OPEN_CLIP
        qkv: dict[str, dict[str, str]] = {}
        for key in comp.keys():
            if key.endswith("position_ids"):
                continue
            sf = single_file_name(name, key, family.value, configs)
            shape, dtype = tuple(comp.shape(key)), comp.dtype(key)
            if name == "vae" and ".mid.attn_1." in sf and len(shape) == 2:
                readers[sf] = _reader(comp, key, lambda t: t.reshape(*t.shape, 1, 1))
                shape = (*shape, 1, 1)
            elif open_clip and sf.endswith("text_projection"):
                readers[sf] = _reader(comp, key, lambda t: t.T.contiguous())
                shape = shape[::-1]
            elif open_clip and ".attn.in_proj_" in sf:
                qkv.setdefault(sf, {})[re.search(r"self_attn\.([qkv])_proj", key).group(1)] = key
                continue
            else:
                readers[sf] = _reader(comp, key, None)
            shapes[sf], dtypes[sf] = shape, dtype
        for sf, parts in qkv.items():
            if set(parts) != {"q", "k", "v"}:
                raise CheckpointError(f"{path}: {name} has only {sorted(parts)} of q/k/v for {sf!r}; re-save the folder")
            first = parts["q"]
            readers[sf] = _cat_reader(comp, [parts["q"], parts["k"], parts["v"]])
            shp = comp.shape(first)
            shapes[sf], dtypes[sf] = (3 * shp[0], *shp[1:]), comp.dtype(first)
        if name.startswith("text_encoder") and not open_clip:
            n = int(configs[name]["max_position_embeddings"])
            sf = TE_PREFIXES[family.value][name] + "text_model.embeddings.position_ids"
            readers[sf] = lambda n=n: torch.arange(n)[None]
            shapes[sf], dtypes[sf] = (1, n), torch.int64
    metadata = {"mergesearch_diffusers_folder": "1"}

    def read(key: str) -> torch.Tensor:
        return readers[key]()

    return checkpoint_cls(path, {k: k for k in readers}, shapes, dtypes, metadata, read, format="diffusers")


def _reader(comp, key: str, transform):
    def read() -> torch.Tensor:
        t = comp.tensor(key)
        return transform(t) if transform is not None else t

    return read


def _cat_reader(comp, keys: list[str]):
    return lambda: torch.cat([comp.tensor(k) for k in keys], dim=0)
