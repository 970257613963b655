"""Tiny SD1-layout checkpoints (real key names, dims capped) and config dicts for search tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

from merge_core import save_safetensors

DATA = Path(__file__).resolve().parents[1] / "data"


def tiny_sd1(path: Path, *, seed: int, max_dim: int = 2, nan_key: str | None = None) -> Path:
    with gzip.open(DATA / "keys_sd1.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, _dtype, optional) in keys.items():
        if key.startswith("model_ema.") or (optional and not key.endswith("position_ids")):
            continue
        small = tuple(min(s, max_dim) for s in shape)
        sd[key] = torch.arange(small[-1]).reshape(small) if key.endswith("position_ids") else torch.randn(small, generator=g)
    if nan_key:
        sd[nan_key] = torch.full_like(sd[nan_key], float("nan"))
    save_safetensors(sd, path)
    return path


def search_config(tmp: Path, models: dict[str, Path], **over) -> dict:
    cfg = {
        "name": "t",
        "models": [{"name": n, "path": str(p)} for n, p in models.items()],
        "space": {"groups": {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"]},
                  "components": {"TE": "search", "VAE": next(iter(models))}},
        "objective": {"vocabulary": "toyworld", "n": 4, "m": 2},
        "budget": {"trials": 12},
        "runs_dir": str(tmp / "runs"),
        "pruner": {"startup_trials": 4},
        "workers": {"poll_seconds": 0.2},
    }
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg
