"""Real key sets (names, shapes, dtypes) of SD1.5, SD2.1 and SDXL checkpoints, and tiny checkpoints built from them."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent / "data"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}


@cache
def real_keys(family: str) -> dict[str, tuple[tuple[int, ...], str, bool]]:
    """key -> (shape, dtype name, optional) of a real single-file checkpoint of ``family``."""
    with gzip.open(DATA / f"keys_{family}.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    return {k: (tuple(s), d, o) for k, (s, d, o) in keys.items()}


def inference_keys(family: str) -> dict[str, tuple[int, ...]]:
    """The keys of a pruned release file: no EMA copies, no optional extras except position ids."""
    return {
        k: s
        for k, (s, _d, optional) in real_keys(family).items()
        if not k.startswith("model_ema.") and (not optional or k.endswith("position_ids"))
    }


def tiny_state_dict(
    family: str = "sd1", *, seed: int = 0, max_dim: int = 6, dtype=torch.float16
) -> dict[str, torch.Tensor]:
    """Random tensors under the real key names, each dimension capped at ``max_dim``."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in inference_keys(family).items():
        small = tuple(min(s, max_dim) for s in shape)
        if key.endswith("position_ids"):
            out[key] = torch.arange(small[-1]).reshape(small)
        else:
            out[key] = torch.randn(small, generator=g).to(dtype)
    return out
