"""Checks on an output path, made before any work: never a source, never a folder, always safetensors."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import CheckpointError

OUTPUT_SUFFIXES = (".safetensors", ".sft")


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (same path, a symlink or a hard link to it)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    overwrite: bool = False,
    what: str = "the merge",
) -> Path:
    """Refuse an output that is a folder, is not named .safetensors, or is one of ``inputs``.

    The last holds whatever ``overwrite`` says: no command writes over one of its own sources.
    Raises ``CheckpointError`` naming the path and the fix; returns ``out`` as a Path.
    """
    out = Path(out)
    if out.is_dir():
        raise CheckpointError(f"{out}: is a folder; give a file name ending in .safetensors (e.g. {out / 'merged.safetensors'})")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CheckpointError(
            f"{out}: {what} is written as safetensors, but the name ends in {out.suffix or 'nothing'!r}; "
            f"name it {out.with_suffix('.safetensors').name} (A1111, Forge and ComfyUI load it the same way)"
        )
    for src in inputs:
        if same_file(out, Path(src)):
            raise CheckpointError(
                f"{out}: is one of the inputs ({src}); write {what} to a new file — no command replaces "
                "its own sources, --overwrite or not"
            )
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; choose another name or pass --overwrite")
    return out
