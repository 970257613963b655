"""LoRA extraction (two checkpoints -> kohya LoRA) and LoRA merging (several LoRAs -> one).

Extraction: for every module kohya trains by default (text-encoder attention/MLP, UNet
transformer blocks, and with ``conv_rank`` > 0 the resnet/resampler convs of a LoCon),
D = alpha*W_B - beta*W_A is viewed as [out, in*kh*kw] and its best rank-r factors
(merge_core.lowrank, the same truncated SVD the contact merge uses) are stored as
``lora_up`` / ``lora_down`` with alpha = r (scale 1). With alpha = beta = 1, applying the
LoRA to A at ratio 1 gives A + D_r — exactly the contact merge (repair) of A toward B on
those weights. SuperMerger's "Make LoRA" writes alpha*tuned - beta*original and clamps the
factors at their 0.99 quantile; here the order is (from, to) as in repair, and nothing is
clamped, so the only error is the truncation's.

Merging: LoRAs of one rank are concatenated along the rank (exact:
sum_i ratio_i*(alpha_i/r_i)*up_i@down_i); with different ranks or ``rank`` given, the
summed delta is re-factorised by the same truncated SVD.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import open_checkpoint
from ..errors import CheckpointError
from ..family import Family
from ..lowrank import low_rank_factors
from ..maths import all_finite
from ..merge import OUT_DTYPES, one_torch_thread
from .file import read_lora, write_lora
from .names import lora_targets

BASE_MODEL_VERSION = {Family.SD1: "sd_v1", Family.SD2: "sd_v2", Family.SDXL: "sdxl_base_v1-0"}


@dataclass
class ExtractStats:
    """Per-module relative residual ||D - D_r|| / ||D|| (0 for modules kept at full rank)."""

    rank: int
    conv_rank: int
    modules: int = 0
    skipped_equal: int = 0
    residuals: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        r = list(self.residuals.values())
        return {
            "rank": self.rank,
            "conv_rank": self.conv_rank,
            "modules": self.modules,
            "skipped_equal": self.skipped_equal,
            "residual_mean": sum(r) / len(r) if r else 0.0,
            "residual_max": max(r) if r else 0.0,
        }


def _matrix(t: torch.Tensor, rows) -> torch.Tensor:
    t = t.float()
    if rows is not None:
        t = t[rows[0] : rows[1]]
    return t.reshape(t.shape[0], -1)


def _factors_as_weights(up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...]):
    """kohya layout: convs keep 4-D factors ([r, in, kh, kw] and [out, r, 1, 1])."""
    r = down.shape[0]
    if len(shape) == 4:
        return down.reshape(r, *shape[1:]), up.reshape(shape[0], r, 1, 1)
    return down, up


def extract_lora(
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rank: int,
    conv_rank: int | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    dtype: str = "fp16",
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractStats:
    """Write the kohya LoRA of ``alpha*B - beta*A`` at ``rank`` (``conv_rank`` for 3x3 convs; 0 = none)."""
    if rank < 1:
        raise ValueError(f"--rank must be 1 or more, got {rank}")
    conv_rank = rank if conv_rank is None else conv_rank
    if conv_rank < 0:
        raise ValueError(f"--conv-rank must be 0 or more, got {conv_rank}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; choose another name or pass --overwrite")
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    if ca.family != cb.family:
        raise CheckpointError(
            f"{cb.path}: is {cb.family.value.upper()} but {ca.path.name} is {ca.family.value.upper()}; "
            "extract a LoRA from two models of one family"
        )
    targets = {n: t for n, t in lora_targets(ca).items() if t.canonical and t.default}
    for t in targets.values():
        if t.key not in cb or cb.shape(t.key) != ca.shape(t.key):
            raise CheckpointError(
                f"{cb.path}: key {t.key!r} is missing or has another shape than in {ca.path.name}; "
                "extract from two models of one architecture"
            )
    stats = ExtractStats(rank=rank, conv_rank=conv_rank)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    with one_torch_thread():
        for name, t in tqdm(targets.items(), desc="extracting", disable=not progress, leave=False):
            is_conv = len(t.shape) == 4 and (t.shape[2] > 1 or t.shape[3] > 1)
            r = conv_rank if is_conv else rank
            if r == 0:
                continue
            wa, wb = _matrix(ca.tensor(t.key), t.rows), _matrix(cb.tensor(t.key), t.rows)
            for ckpt, w in ((ca, wa), (cb, wb)):
                if not all_finite(w):
                    raise CheckpointError(f"{ckpt.path}: key {t.key!r} holds NaN or infinite values; the file is damaged")
            d = alpha * wb - beta * wa
            norm = float(torch.linalg.vector_norm(d))
            if norm == 0.0:
                stats.skipped_equal += 1
                continue
            up, down, _ = low_rank_factors(d, r)
            stats.residuals[name] = float(torch.linalg.vector_norm(d - up @ down)) / norm
            down_w, up_w = _factors_as_weights(up, down, t.shape)
            modules[name] = (down_w, up_w, float(down.shape[0]))
            stats.modules += 1
    if not modules:
        raise CheckpointError(f"{ca.path} and {cb.path}: no weight differs; there is no LoRA to extract")
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_network_args": json.dumps({"conv_dim": conv_rank, "conv_alpha": conv_rank} if conv_rank else {}),
        "ss_base_model_version": BASE_MODEL_VERSION[ca.family],
        "mergesearch_lora_extract": json.dumps({
            "a": {"path": str(ca.path), "sha256": ca.sha256},
            "b": {"path": str(cb.path), "sha256": cb.sha256},
            "alpha": alpha, "beta": beta, "family": ca.family.value, **stats.summary(),
        }),
    }
    write_lora(modules, out, meta, dtype=OUT_DTYPES[dtype], overwrite=overwrite)
    return stats


def merge_loras(
    specs: list[tuple[str, float]],
    out: str | os.PathLike,
    *,
    rank: int | None = None,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> dict:
    """Merge ``[(lora file, ratio), ...]`` into one kohya LoRA; returns a summary.

    Concatenation when every module has one rank across the inputs and ``rank`` is None;
    otherwise SVD re-factorisation to ``rank`` (default: the largest input rank).
    """
    if len(specs) < 2:
        raise ValueError("lora merge takes two or more LORA:RATIO")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; choose another name or pass --overwrite")
    loras = [read_lora(p) for p, _ in specs]
    names = list(dict.fromkeys(n for lf in loras for n in lf.modules))
    ranks = {m.rank for lf in loras for m in lf.modules.values()}
    concat = rank is None and len(ranks) == 1
    target_rank = rank if rank is not None else max(ranks)
    if target_rank < 1:
        raise ValueError(f"--rank must be 1 or more, got {target_rank}")
    merged: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    residuals: list[float] = []
    with one_torch_thread():
        for name in names:
            parts = [(lf, lf.modules[name], ratio) for lf, (_, ratio) in zip(loras, specs, strict=True)
                     if name in lf.modules]
            shapes = {(m.up.shape[0], m.down.reshape(m.rank, -1).shape[1]) for _, m, _ in parts}
            if len(shapes) > 1:
                raise CheckpointError(
                    f"{parts[1][0].path}: module {name!r} has shape {sorted(shapes)[1]} but another LoRA has "
                    f"{sorted(shapes)[0]}; merge LoRAs made for one model family"
                )
            down_shape = parts[0][1].down.shape[1:]
            if concat:
                ups = [m.up.reshape(m.up.shape[0], -1).float() * (ratio * m.scale) for _, m, ratio in parts]
                downs = [m.down.reshape(m.rank, -1).float() for _, m, _ in parts]
                up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
            else:
                d = sum(m.delta((m.up.shape[0], -1), ratio) for _, m, ratio in parts)
                up, down, _ = low_rank_factors(d, target_rank)
                norm = float(torch.linalg.vector_norm(d))
                residuals.append(float(torch.linalg.vector_norm(d - up @ down)) / norm if norm else 0.0)
            r = down.shape[0]
            if len(down_shape) == 3:
                down_w, up_w = down.reshape(r, *down_shape), up.reshape(up.shape[0], r, 1, 1)
            else:
                down_w, up_w = down, up
            merged[name] = (down_w, up_w, float(r))
    summary = {
        "inputs": [{"path": str(lf.path), "sha256": lf.sha256, "ratio": ratio}
                   for lf, (_, ratio) in zip(loras, specs, strict=True)],
        "mode": "concatenate" if concat else "svd",
        "rank": None if concat else target_rank,
        "modules": len(merged),
        "residual_max": max(residuals) if residuals else 0.0,
    }
    meta = {"ss_network_module": "networks.lora", "mergesearch_lora_merge": json.dumps(summary)}
    write_lora(merged, out, meta, dtype=OUT_DTYPES[dtype], overwrite=overwrite)
    return summary
