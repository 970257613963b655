"""SuperMerger's calc modes, from the behaviour described in shared notes/supermerger-spec.md §3.

Written from that description (SuperMerger is AGPL: behaviour only, no code). Where the
description leaves a choice, the docstring of each function says which reading we took.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .registry import BlockParams, KeyContext, MergeMethod, Param, register

_VAE = "first_stage_model."


# ---- cosineA / cosineB -------------------------------------------------------------------------
def _cosine_stat(a: torch.Tensor, b: torch.Tensor, normalised: bool) -> torch.Tensor:
    """(per-column cosine along dim 0 + whole-tensor cosine) / 2; shape a.shape[1:] (a scalar for 1-D).

    cosineA normalises A and B along dim 0 first (so the whole-tensor cosine is the columns' mean).
    """
    if normalised:
        a, b = F.normalize(a, p=2, dim=0), F.normalize(b, p=2, dim=0)
    per_column = F.cosine_similarity(a, b, dim=0)
    whole = torch.dot(a.reshape(-1), b.reshape(-1)) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return (per_column + whole) / 2


def cosine_range(pairs: Iterable[tuple[str, Sequence[torch.Tensor]]], *, normalised: bool) -> tuple[float, float]:
    """The similarity range (smin, smax) over the whole model, SuperMerger's stage 0.

    Every key's statistic values are pooled; NaNs dropped; values under the 1st percentile removed,
    then values over the 99th percentile of what remains (numpy ``method="midpoint"``).
    Reading taken: cosineA's pool uses the same statistic as its per-key step ((columns + whole)/2);
    the spec notes SuperMerger pools the columns alone there, which only shifts the range slightly.
    """
    values = []
    for _key, (a, b) in pairs:
        if a.ndim == 0:
            continue
        values.append(_cosine_stat(a.float(), b.float(), normalised).reshape(-1).double().cpu().numpy())
    if not values:
        return 0.0, 1.0
    v = np.concatenate(values)
    v = v[~np.isnan(v)]
    v = v[v >= np.percentile(v, 1, method="midpoint")]
    v = v[v <= np.percentile(v, 99, method="midpoint")]
    return float(v.min()), float(v.max())


def _cosine(normalised: bool):
    def fn(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
        a, b = ts
        if a.ndim == 0:
            return a.clone()
        smin, smax = ctx.state
        alpha = abs(p["alpha"]) if normalised else p["alpha"]
        # a zero tensor has no direction: count it as fully similar (A and B agree up to scale)
        comb = torch.nan_to_num(_cosine_stat(a, b, normalised), nan=smax)
        span = smax - smin if smax > smin else 1.0
        k = ((comb - smin) / span - alpha).clamp(0.0, 1.0)
        return torch.lerp(b, a, k.unsqueeze(0) if a.ndim > 1 else k)

    return fn


# ---- trainDifference, smoothAdd, extract -------------------------------------------------------
TRAIN_DIFFERENCE_SCALE = 1.8  # SuperMerger's empirical constant (spec §3.2)


def _train_difference(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b, c = ts
    d = b - c
    ba = (b - a).abs_()
    den = d.abs() + ba
    new = torch.where(den > 0, d * ba / torch.where(den > 0, den, 1.0), 0.0)
    return a + (TRAIN_DIFFERENCE_SCALE * p["alpha"]) * new


def smooth(d: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage median filter (size 3 on every axis) then Gaussian filter (sigma 1), mode reflect."""
    from scipy import ndimage

    x = d.detach().cpu().double().numpy()
    y = ndimage.gaussian_filter(ndimage.median_filter(x, size=3), sigma=1)
    return torch.from_numpy(y).to(device=d.device, dtype=torch.float32)


def _smooth_add(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b, c = ts
    return a + p["alpha"] * smooth(b - c)


def _extract(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b, c = ts
    if a.ndim == 0:
        return a.clone()
    x, y = b - a, c - a
    cos = F.cosine_similarity(x, y, dim=-1).clamp(-1.0, 1.0).unsqueeze(-1)
    d = ((cos + 1) / 2) ** p["gamma"]
    return a + torch.lerp(x, y, p["alpha"]) * torch.lerp(d, 1 - d, p["beta"])


# ---- tensor, tensor2, self ---------------------------------------------------------------------
def swap_slices(a: torch.Tensor, b: torch.Tensor, alpha: float, beta: float, dim: int, n: int) -> torch.Tensor:
    """B's slices in the cyclic window [beta, beta + alpha) of ``n`` along ``dim``, A's elsewhere.

    Bounds are ``int(n * x)``; slicing clips them to the dimension's length.
    """
    def sl(lo: int, hi: int):
        index = [slice(None)] * a.ndim
        index[dim] = slice(lo, hi)
        return tuple(index)

    if alpha + beta <= 1:
        out = a.clone()
        s = sl(int(n * beta), int(n * (alpha + beta)))
        out[s] = b[s]
    else:
        out = b.clone()
        s = sl(int(n * (alpha + beta - 1)), int(n * beta))
        out[s] = a[s]
    return out


def _tensor(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b = ts
    if a.ndim == 0:
        return a.clone()
    return swap_slices(a, b, p["alpha"], p["beta"], 0, a.shape[0])


def _tensor2(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b = ts
    if a.ndim < 2:
        return _tensor(ts, p, ctx)
    n = a.shape[1] if a.shape[1] > 100 else a.shape[0]
    return swap_slices(a, b, p["alpha"], p["beta"], 1, n)


_SELF_KEEP = ("to_out", "proj_out", "norm")


def _self(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    (a,) = ts
    if p["alpha"] == 0.0 or any(s in ctx.key for s in _SELF_KEEP):
        return a.clone()
    return a * p["alpha"]


_ALPHA_UNBOUNDED = Param("alpha", 0.5, doc="ratio")
_UNIT = dict(low=0.0, high=1.0)

for _m in (
    MergeMethod(
        "cosine-a", "(1-k)B + kA, k = clip((cos_n(A,B) - smin)/(smax - smin) - |a|, 0, 1)",
        "SuperMerger calc mode cosineA (spec §3.1)", _cosine(True), ("A", "B"), (_ALPHA_UNBOUNDED,),
        elementwise=False, skip=lambda key: key.startswith(_VAE), aliases=("cosineA",),
        prepare=lambda pairs: cosine_range(pairs, normalised=True),
        summary="weighted sum whose ratio follows each column's cosine similarity (normalised)",
    ),
    MergeMethod(
        "cosine-b", "(1-k)B + kA, k = clip((cos(A,B) - smin)/(smax - smin) - a, 0, 1)",
        "SuperMerger calc mode cosineB (spec §3.1)", _cosine(False), ("A", "B"), (_ALPHA_UNBOUNDED,),
        elementwise=False, skip=lambda key: key.startswith(_VAE), aliases=("cosineB",),
        prepare=lambda pairs: cosine_range(pairs, normalised=False),
        summary="weighted sum whose ratio follows each column's cosine similarity",
    ),
    MergeMethod(
        "train-difference", "A + 1.8a (B-C)|B-A| / (|B-C| + |B-A|)",
        "SuperMerger calc mode trainDifference (spec §3.2)", _train_difference, ("A", "B", "C"),
        (Param("alpha", 1.0, doc="strength"),), aliases=("trainDifference",),
        summary="add B - C as if A had been trained on it",
    ),
    MergeMethod(
        "smooth-add", "A + a gaussian(median(B - C))",
        "SuperMerger calc mode smoothAdd (spec §3.3)", _smooth_add, ("A", "B", "C"),
        (Param("alpha", 1.0, doc="strength"),), elementwise=False, aliases=("smoothAdd", "smoothAdd MT"),
        summary="add B - C after a median and a Gaussian filter",
    ),
    MergeMethod(
        "extract", "A + lerp(B-A, C-A, a) * lerp(d, 1-d, b), d = ((cos_last(B-A, C-A) + 1)/2)^g",
        "SuperMerger calc mode extract (spec §3.4)", _extract, ("A", "B", "C"),
        (Param("alpha", 0.5, **_UNIT, doc="B (0) or C (1)"),
         Param("beta", 0.5, **_UNIT, doc="similar (0) or dissimilar (1) features"),
         Param("gamma", 0.3, 0.0, 20.0, "strictness of 'similar'")),
        elementwise=False,
        summary="add what B and C share (or do not share) relative to A",
    ),
    MergeMethod(
        "tensor", "B's rows [b, a+b) of dim 0 (cyclic), A's elsewhere",
        "SuperMerger calc mode tensor (spec §3.5)", _tensor, ("A", "B"),
        (Param("alpha", 0.5, **_UNIT, doc="fraction swapped"), Param("beta", 0.0, **_UNIT, doc="window start")),
        elementwise=False,
        summary="swap whole slices along dim 0 instead of interpolating",
    ),
    MergeMethod(
        "tensor2", "B's slices [b, a+b) of dim 1 (cyclic), A's elsewhere",
        "SuperMerger calc mode tensor2 (spec §3.5)", _tensor2, ("A", "B"),
        (Param("alpha", 0.5, **_UNIT, doc="fraction swapped"), Param("beta", 0.0, **_UNIT, doc="window start")),
        elementwise=False,
        summary="swap whole slices along dim 1 instead of interpolating",
    ),
    MergeMethod(
        "self", "a * A (to_out, proj_out and norm keys kept; a = 0 keeps A)",
        "SuperMerger calc mode self (spec §3.6)", _self, ("A",), (Param("alpha", 1.0, doc="scale"),),
        summary="scale one model's weights",
    ),
):
    register(_m)
