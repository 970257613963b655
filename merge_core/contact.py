"""Contact merge (repair): A plus a low-rank part of (B - A), tensor by tensor.

For every weight, D = B - A is viewed as a matrix (conv kernels as out x in*kh*kw) and only
its top-r singular triplets are added to A: a rank-r "contact" with B that moves A toward B
along B's strongest directions and drops the rest. 1-D tensors (norms, biases) are taken
from B whole. Rank 0 gives A, full rank gives B.

The truncated SVD is merge_core.lowrank (shared with LoRA extraction); large matrices use
its randomised path, and the residual is reported per file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .checkpoint import open_checkpoint
from .errors import CheckpointError
from .hashing import file_sha256
from .layout import layout_for
from .lowrank import effective_rank_error, low_rank  # noqa: F401  (re-exported: one SVD for repair and LoRA)
from .maths import all_finite
from .merge import FP8, OUT_DTYPES, one_torch_thread, output_dtype
from .outputs import check_output
from .safetensors_file import StreamingWriter, atomic_output, tensor_bytes


@dataclass
class ContactStats:
    """What a repair kept: per-key relative residual ||D - D_r|| / ||D|| of the low-rank part."""

    rank: int
    keys: int = 0
    low_rank_keys: int = 0
    randomized_keys: int = 0
    residuals: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        r = list(self.residuals.values())
        return {
            "rank": self.rank,
            "keys": self.keys,
            "low_rank_keys": self.low_rank_keys,
            "randomized_keys": self.randomized_keys,
            "residual_mean": sum(r) / len(r) if r else 0.0,
            "residual_max": max(r) if r else 0.0,
        }


def contact_merge(
    a: torch.Tensor, b: torch.Tensor, rank: int, *, exact: bool | None = None
) -> tuple[torch.Tensor, float | None, bool]:
    """A + rank-r truncation of (B - A), in fp32.

    Returns (tensor, relative residual ||D - D_r||/||D|| or None for 1-D tensors, randomized?).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    af, bf = a.float(), b.float()
    if a.dim() < 2:
        return bf.clone(), None, False
    d = (bf - af).reshape(a.shape[0], -1)
    if rank >= min(d.shape):  # the truncation keeps all of D: the result is B (exactly, not A + (B - A))
        return bf.clone(), 0.0, False
    dr, randomized = low_rank(d, rank, exact=exact)
    norm = float(torch.linalg.vector_norm(d))
    residual = float(torch.linalg.vector_norm(d - dr)) / norm if norm > 0 else 0.0
    return af + dr.reshape(a.shape), residual, randomized


def repair_to_file(
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rank: int = 4,
    dtype: str = "fp16",
    exact: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ContactStats:
    """Write A + rank-r(B - A) for every weight of two same-family checkpoints to ``out``.

    Keys are read as a merge reads them (one family, one variant, every UNet key placed in a
    block); non-weight keys are copied from A, or from B when only B holds them. ``out`` is
    never one of A and B. Raises ``CheckpointError`` naming the file, the key and the fix.
    """
    if rank < 0:
        raise ValueError(f"--rank must be 0 or more, got {rank}")
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    out = check_output(out, [ca.path, cb.path], overwrite=overwrite, what="the repair")
    if ca.family != cb.family:
        raise CheckpointError(
            f"{cb.path}: is {cb.family.value.upper()} but {ca.path.name} is {ca.family.value.upper()}; "
            "repair needs two models of one family"
        )
    layout = layout_for(ca.family)
    if dtype not in OUT_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(OUT_DTYPES)}")
    plan: list[tuple[str, bool]] = []  # (key, merged?)
    for key in ca.file_order(ca.keys()):
        mergeable = layout.block_of(key) is not None and ca.dtype(key).is_floating_point
        _refuse_unplaced(ca, key, layout)
        if mergeable:
            if key not in cb:
                raise CheckpointError(
                    f"{cb.path}: has no key {key!r} that {ca.path.name} has; use a full checkpoint"
                )
            if cb.shape(key) != ca.shape(key):
                raise CheckpointError(
                    f"{cb.path}: key {key!r} has shape {cb.shape(key)} but {ca.path.name} has {ca.shape(key)}; "
                    "repair needs two models of one architecture and variant"
                )
        plan.append((key, mergeable))
    # Keys only B holds: a weight cannot be repaired without A's; anything else is copied from B.
    only_b = [k for k in cb.file_order(cb.keys()) if k not in ca]
    for key in only_b:
        _refuse_unplaced(cb, key, layout)
        if layout.block_of(key) is not None and cb.dtype(key).is_floating_point:
            raise CheckpointError(
                f"{ca.path}: has no key {key!r} that {cb.path.name} has; repair needs A to hold every weight "
                "B has — use a full checkpoint as A"
            )
    source = {k: ca for k, _m in plan} | {k: cb for k in only_b}
    plan += [(k, False) for k in only_b]
    # fp8 applies to the UNet only, as in merges (merge.output_dtype)
    out_dtypes = {k: output_dtype(dtype, layout.block_of(k), layout) if m else source[k].dtype(k) for k, m in plan}
    entries = {k: (out_dtypes[k], source[k].shape(k)) for k, _m in plan}
    stats = ContactStats(rank=rank)
    hashes: dict[str, str] = {}
    hasher = threading.Thread(
        target=lambda: hashes.update(a=file_sha256(ca.path), b=file_sha256(cb.path)), daemon=True
    )

    def metadata(done: bool) -> dict[str, str]:
        info = {
            "a": {"path": str(ca.path), "sha256": hashes.get("a", "0" * 64) if done else "0" * 64},
            "b": {"path": str(cb.path), "sha256": hashes.get("b", "0" * 64) if done else "0" * 64},
            "rank": rank,
            "dtype": dtype,
            **(stats.summary() if done else {}),
        }
        return {"format": "pt", "mergesearch_repair": json.dumps(info)}

    with atomic_output(out, overwrite=overwrite) as (fd, _tmp), one_torch_thread():
        hasher.start()
        writer = StreamingWriter(fd, out, entries, metadata(False))
        with writer:
            _repair_keys(writer, plan, source, ca, cb, rank, exact, out_dtypes, stats, progress)
        hasher.join()
        writer.finish(metadata(True))
    return stats


def _refuse_unplaced(ckpt, key: str, layout) -> None:
    if (
        key.startswith(layout.unet_prefix)
        and layout.block_of(key) is None
        and not layout.is_non_mergeable(key)
        and ckpt.dtype(key).is_floating_point
    ):
        raise CheckpointError(
            f"{ckpt.path}: UNet key {key!r} belongs to no block of the {layout.family.value} layout, so it "
            f"cannot be repaired; check `mergesearch inspect {ckpt.path.name}` (family and unplaced keys)"
        )


def _repair_keys(writer, plan, source, ca, cb, rank, exact, out_dtypes, stats, progress) -> None:
    for key, mergeable in tqdm(plan, desc="repairing", disable=not progress, leave=False):
        if not mergeable:
            writer.put(key, source[key].raw_bytes(key))
            continue
        ta, tb = ca.tensor(key), cb.tensor(key)
        for ckpt, t in ((ca, ta), (cb, tb)):
            if not all_finite(t):
                raise CheckpointError(
                    f"{ckpt.path}: key {key!r} holds NaN or infinite values; the file is damaged"
                )
        merged, residual, randomized = contact_merge(ta, tb, rank, exact=exact)
        stats.keys += 1
        if residual is not None:
            stats.low_rank_keys += 1
            stats.randomized_keys += int(randomized)
            stats.residuals[key] = residual
        out_dtype = out_dtypes[key]
        result = merged.to(out_dtype)
        too_big = out_dtype in FP8 and float(merged.abs().max()) > torch.finfo(out_dtype).max  # fp8 casts saturate
        if too_big or not all_finite(result):
            raise CheckpointError(
                f"repaired key {key!r} overflows {str(out_dtype).removeprefix('torch.')}; use --dtype bf16 or fp32"
            )
        writer.put(key, tensor_bytes(result))
