"""Task-vector methods over a base and n models: TIES, DARE, DARE-TIES; and SLERP between two models.

Task vectors are tau_i = M_i - base (sources[0] is the base); w_i is model i's weight for the
block. All arithmetic is fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .hashed_uniform import hashed_uniform, stream_key
from .registry import BlockParams, KeyContext, MergeMethod, Param, register

_LAMBDA = Param("lambda", 1.0, 0.0, 4.0, "scale of the merged task vector")


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its ``ceil(density * numel)`` largest-magnitude elements set to 0.

    The threshold is the k-th largest |tau| (``torch.kthvalue``); elements tied with it are all
    kept, so a tensor with repeated magnitudes may keep slightly more than k. density >= 1 keeps
    everything, density <= 0 nothing. Shapes and dtype are kept.
    """
    n = tau.numel()
    k = min(n, max(0, math.ceil(density * n - 1e-9)))
    if k >= n:
        return tau
    if k == 0:
        return torch.zeros_like(tau)
    mag = tau.abs().reshape(-1)
    threshold = torch.kthvalue(mag, n - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros((), dtype=tau.dtype, device=tau.device))


def disjoint_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES' sign election and disjoint mean over weighted task vectors ``deltas`` (w_i * tau_i).

    sign = sign(sum_i deltas_i); an element of delta_i counts when it is non-zero and has that sign;
    result = sum of counted deltas / sum of the counted models' weights (0 where none counts), so
    equal weights give the paper's disjoint mean (Yadav et al. 2023, arXiv:2306.01708, eq. 2-3;
    the weight normalisation is mergekit's ``ties`` with ``normalize``).
    """
    total = torch.zeros_like(deltas[0])
    for d in deltas:
        total.add_(d)
    sign = torch.sign(total)
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for d, w in zip(deltas, weights, strict=True):
        agree = (torch.sign(d) == sign) & (d != 0)
        num.add_(torch.where(agree, d, 0.0))
        den.add_(agree.to(den.dtype), alpha=w)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _ties(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    base = ts[0]
    deltas, weights = [], []
    for m, w in zip(ts[1:], p.weights, strict=True):
        if w == 0.0:
            continue
        deltas.append(trim_top_k(m - base, p["density"]).mul_(w))
        weights.append(w)
    if not deltas:
        return base.clone()
    return base + p["lambda"] * disjoint_merge(deltas, weights)


def dare_mask_rescale(tau: torch.Tensor, p: float, ctx: KeyContext, index: int) -> torch.Tensor:
    """DARE's drop and rescale (Yu et al. 2023, arXiv:2311.03099): each element of ``tau`` is dropped
    with probability ``p`` and the kept ones are scaled by 1/(1-p).

    The draw for element j of the flattened key is ``hashed_uniform`` of (seed, key, source index)
    at ``ctx.offset + j``: an element is kept when its uniform value is >= p. ``tau`` may be a flat
    chunk starting at ``ctx.offset``.
    """
    if p <= 0.0:
        return tau
    u = hashed_uniform(stream_key(ctx.seed, ctx.key, index), ctx.offset, tau.numel(), tau.device)
    keep = (u >= p).reshape(tau.shape)
    return torch.where(keep, tau * (1.0 / (1.0 - p)), 0.0)


def _dare(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    base = ts[0]
    out = base.clone()
    for i, (m, w) in enumerate(zip(ts[1:], p.weights, strict=True), start=1):
        if w != 0.0:
            out.add_(dare_mask_rescale(m - base, p["drop"], ctx, i), alpha=w * p["lambda"])
    return out


def _dare_ties(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    base = ts[0]
    deltas, weights = [], []
    for i, (m, w) in enumerate(zip(ts[1:], p.weights, strict=True), start=1):
        if w != 0.0:
            deltas.append(dare_mask_rescale(m - base, p["drop"], ctx, i).mul_(w))
            weights.append(w)
    if not deltas:
        return base.clone()
    return base + p["lambda"] * disjoint_merge(deltas, weights)


SLERP_PARALLEL = 0.9995  # |cos| above this: the tensors are nearly parallel and SLERP falls back to lerp


def _slerp(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    a, b = ts
    t = p["alpha"]
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        return torch.lerp(a, b, t)
    cos = float(torch.dot(a.reshape(-1), b.reshape(-1)) / (na * nb))
    if abs(cos) > SLERP_PARALLEL:
        return torch.lerp(a, b, t)
    omega = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(omega)
    return a * (math.sin((1.0 - t) * omega) / s) + b * (math.sin(t * omega) / s)


register(MergeMethod(
    "ties", "base + lambda * disjoint_mean_i(w_i * trim_density(tau_i))",
    "Yadav et al. 2023, TIES-Merging, arXiv:2306.01708", _ties, (),
    (Param("density", 0.2, 0.0, 1.0, "fraction of each task vector kept, by magnitude"), _LAMBDA),
    model_weights=True, elementwise=False, aliases=("TIES-merging", "ties-sum"), weight_range=(0.0, math.inf),
    identity={"density": 1.0, "lambda": 1.0},
    summary="trim each task vector to its largest entries, elect a sign, average the agreeing ones",
))
register(MergeMethod(
    "dare", "base + lambda * sum_i w_i * drop_p(tau_i) / (1 - p), p = drop",
    "Yu et al. 2023, DARE, arXiv:2311.03099", _dare, (),
    (Param("drop", 0.5, 0.0, 0.99, "drop rate p"), _LAMBDA),
    model_weights=True, elementwise=True, random=True, aliases=("dare-linear",),
    identity={"drop": 0.0, "lambda": 1.0},
    summary="drop a random fraction p of each task vector, rescale the rest by 1/(1-p), add",
))
register(MergeMethod(
    "dare-ties", "base + lambda * disjoint_mean_i(w_i * drop_p(tau_i) / (1 - p))",
    "Yu et al. 2023 (DARE) followed by TIES' sign election", _dare_ties, (),
    (Param("drop", 0.5, 0.0, 0.99, "drop rate p"), _LAMBDA),
    model_weights=True, elementwise=True, random=True, weight_range=(0.0, math.inf),
    identity={"drop": 0.0, "lambda": 1.0},
    summary="DARE's drop and rescale, then TIES' sign election and disjoint mean",
))
register(MergeMethod(
    "slerp", "sin((1-a)w)/sin(w) A + sin(a w)/sin(w) B, cos w = <A,B>/(|A||B|)",
    "Shoemake 1985; per-tensor form as in mergekit's slerp", _slerp, ("A", "B"),
    (Param("alpha", 0.5, 0.0, 1.0, "position from A (0) to B (1)"),),
    elementwise=False,
    summary="spherical interpolation per tensor (linear when nearly parallel)",
))
