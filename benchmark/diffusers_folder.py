"""Writing diffusers folders: a checkpoint (file or folder) -> ``save_pretrained`` layout.

The weights go through the renderer's pipeline, i.e. diffusers' own single-file converters
(merge_core.diffusers_names.to_diffusers) into diffusers' own modules, and the folder is
written by diffusers' ``save_pretrained``: what `DiffusionPipeline.from_pretrained(OUT)`
loads is what diffusers itself would have produced. Configs and tokenizer come from the
source folder, or for a single file from the shipped family config that fits it
(`guess_config`). The folder is built under a temporary name beside OUT and renamed at the
end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from benchmark.errors import BenchmarkError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def check_output_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse an existing OUT (unless overwrite) or a missing parent folder, before any work."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BenchmarkError(f"{out}: already exists; choose another folder or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"{out}: is a file; give a folder name for a diffusers model")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BenchmarkError(f"{out}: folder {parent} does not exist; create it first")
    return out


def write_diffusers_folder(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` (single file or diffusers folder) as a diffusers folder at ``out``."""
    from benchmark.renderer import Renderer, guess_config

    out = check_output_folder(out, overwrite=overwrite)
    if dtype not in DTYPES:
        raise BenchmarkError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    renderer = Renderer(config if config is not None else guess_config(checkpoint), dtype=DTYPES[dtype])
    renderer.load_checkpoint(checkpoint)
    tmp = Path(tempfile.mkdtemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp"))
    try:
        te = renderer.pipeline.text_encoder
        te.__dict__.pop("text_model", None)  # the renderer's clip-skip alias is not part of the model
        try:
            renderer.pipeline.save_pretrained(tmp, safe_serialization=True)
        finally:
            if "text_model" not in te._modules:
                object.__setattr__(te, "text_model", te)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
