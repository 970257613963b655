"""Writing toy-world single-file checkpoints (SD1 key layout) atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from benchmark.toyworld import family
from benchmark.toyworld.single_file import to_single_file


def save_single_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write `tensors` to a `.safetensors` file atomically (temp name in the same folder, then rename)."""
    path = Path(path)
    try:
        from merge_core import save_safetensors  # the project's writer, once present
    except ImportError:
        save_safetensors = None
    if save_safetensors is not None:
        save_safetensors(tensors, path, metadata)
        return path
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def modules_to_file(unet, vae, text_encoder, path: str | Path, *, dtype: torch.dtype = torch.float16,
                    metadata: dict[str, str] | None = None) -> Path:
    """Save diffusers modules as one SD1-layout single file; integer buffers keep their dtype."""
    sd = to_single_file(unet, vae, text_encoder)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu() for k, v in sd.items()}
    return save_single_file(sd, path, {"format": "pt", "toyworld": "1", **(metadata or {})})


def random_checkpoint(path: str | Path, seed: int = 0, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write a randomly initialised toy-world checkpoint (SD1 single-file layout) for tests."""
    unet, vae, te = family.seeded_init(seed)
    return modules_to_file(unet, vae, te, path, dtype=dtype, metadata={"toyworld_model": "random", "seed": str(seed)})
