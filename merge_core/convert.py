"""Any readable checkpoint (single file or diffusers folder) written as one .safetensors, streamed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import open_checkpoint
from .errors import CheckpointError
from .merge import OUT_DTYPES, one_torch_thread
from .safetensors_file import StreamingWriter, atomic_output, tensor_bytes


def save_as_single_file(
    path: str | os.PathLike, out: str | os.PathLike, *, dtype: str | None = "fp16", overwrite: bool = False
) -> Path:
    """Write ``path``'s tensors under single-file keys to ``out`` (float tensors cast to ``dtype``;
    None keeps each stored dtype). Atomic: a temporary name, renamed when complete."""
    ckpt = open_checkpoint(path)
    out = Path(out)
    if out.exists() and out.resolve() == ckpt.path.resolve():
        raise CheckpointError(f"{out}: is the input; write to a new file")
    _ = ckpt.family  # refuse a non-SD file before writing anything
    target = OUT_DTYPES[dtype] if dtype is not None else None
    keys = ckpt.file_order(ckpt.keys())
    entries = {}
    for k in keys:
        stored = ckpt.dtype(k)
        entries[k] = (target if target is not None and stored.is_floating_point else stored, ckpt.shape(k))
    meta = {"format": "pt", "mergesearch_converted_from": json.dumps({"path": str(ckpt.path), "sha256": ckpt.sha256})}
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp), one_torch_thread():
        with StreamingWriter(fd, out, entries, meta) as writer:
            for k in keys:
                dt = entries[k][0]
                if dt == ckpt.dtype(k):
                    writer.put(k, ckpt.raw_bytes(k))
                else:
                    writer.put(k, tensor_bytes(ckpt.tensor(k).to(dt)))
            writer.finish(meta)
    return out
