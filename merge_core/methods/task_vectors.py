"""Task-vector methods over a base and n models: TIES, DARE, DARE-TIES; and SLERP between two models.

Task vectors are tau_i = M_i - base (sources[0] is the base); w_i is model i's weight for the
block. All arithmetic is fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .hashed_uniform import hashed_uniform, stream_key
from .registry import BlockParams, KeyContext, MergeMethod, Param, register

_LAMBDA = Param("lambda", 1.0, 0.0, 4.0, "scale of the merged task vector")


_WHOLE_SELECT = 1 << 13  # up to this many elements, one selection over the whole tensor is cheap
_SAMPLE = 1 << 14  # largest strided sample that brackets the k-th largest value of a bigger tensor
_CHUNK = 1 << 18  # elements per piece of the passes below: in cache, and few enough ops that threads scale


def _smallest(values: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """The ``ranks``-th smallest elements (0-based) of a flat fp32 tensor, as Python floats (exact).

    numpy's introselect on CPU (about 3x faster than ``torch.kthvalue`` there, several ranks in one
    call); ``torch.kthvalue`` elsewhere. Both are exact, so the result is the same on every device.
    """
    if values.device.type == "cpu":
        part = np.partition(values.numpy(), list(ranks))
        return [float(part[r]) for r in ranks]
    return [float(torch.kthvalue(values, r + 1).values) for r in ranks]


ValuesAt = Callable[[slice, "torch.Tensor | None"], torch.Tensor]


def _select_kth_largest(n: int, k: int, values_at: ValuesAt, device: torch.device) -> float:
    """The k-th largest (1 <= k <= n) of n fp32 values that ``values_at(slice, out)`` computes on demand.

    ``values_at(sl, out)`` returns the flat fp32 values at ``sl`` (a contiguous or strided slice of
    range(n)), written into ``out`` when it is given (an fp32 buffer of the slice's length), so the
    values never need to exist all at once. A selection over a whole tensor costs about 15-60 ns an
    element on CPU and an SD1.5 task vector has 1e9 elements, so the value is bracketed by two order
    statistics of a strided sample (rank k/n of the sample +- 5 binomial standard deviations). One
    pass then counts the values above the bracket and gathers those inside it (a few percent), and
    the exact selection runs on those alone. On CPU the pass runs piece by piece in cache with
    numpy's comparisons (``count_nonzero`` of a comparison is ~20x faster than torch's bool sum).
    If the bracket misses (a sample unlike the tensor), the whole tensor is selected from. NaN sorts
    above every number, as in ``torch.kthvalue`` and ``np.partition``.
    """
    if n <= _WHOLE_SELECT:
        return _smallest(values_at(slice(None), None), [n - k])[0]
    sample = values_at(slice(None, None, n // min(_SAMPLE, n // 32)), None).contiguous()  # 256 .. 2 * _SAMPLE
    s = sample.numel()
    mid = k / n * s
    margin = 5.0 * math.sqrt(mid * (1.0 - k / n)) + 16.0
    # hi: most likely above the k-th largest; lo: most likely below it (ranks counted from the top)
    hi, lo = _smallest(sample, [s - max(1, math.floor(mid - margin)), s - min(s, math.ceil(mid + margin))])
    if device.type == "cpu":
        above, bands = 0, []
        buf = torch.empty(min(n, _CHUNK))
        for start in range(0, n, _CHUNK):
            x = values_at(slice(start, start + _CHUNK), buf[: min(_CHUNK, n - start)]).numpy()
            above += x.size - int(np.count_nonzero(x <= hi))  # NaN counts as above: it sorts last
            bands.append(x[(x >= lo) & (x <= hi)])  # a copy: buf is reused
        band = torch.from_numpy(np.concatenate(bands))
    else:
        values = values_at(slice(None), None)
        above = n - int((values <= hi).sum())
        inside = values >= lo
        inside &= values <= hi
        band = values[inside]
        del values, inside
    rank = k - above  # the k-th largest overall is the rank-th largest inside [lo, hi]
    if 1 <= rank <= band.numel():
        return _smallest(band, [band.numel() - rank])[0]
    return _smallest(values_at(slice(None), None).contiguous(), [n - k])[0]


def kth_largest(values: torch.Tensor, k: int) -> float:
    """The ``k``-th largest element (1 <= k <= numel) of the flat fp32 tensor ``values`` (exact).

    Exactly ``torch.kthvalue(values, numel - k + 1).values``, computed by bracketing and a
    selection over the bracket (see :func:`_select_kth_largest`). Raises ValueError for k out of range.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is outside [1, {n}]")

    def values_at(sl: slice, out: torch.Tensor | None) -> torch.Tensor:
        return values[sl]  # views: nothing to compute

    return _select_kth_largest(n, k, values_at, values.device)


def kth_largest_magnitude(model: torch.Tensor, base: torch.Tensor, k: int) -> float:
    """The ``k``-th largest |model - base| (1 <= k <= numel) with the difference taken in fp32 (exact).

    ``model`` and ``base``: same-shape tensors in any float dtype that upcasts exactly to fp32
    (fp16, bf16, fp32). The task vector is computed piece by piece, never whole: TIES' trim
    threshold costs one pass over the two sources and no memory of the key's size. Raises
    ValueError for k out of range.
    """
    n = base.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} is outside [1, {n}]")
    m, b = model.reshape(-1), base.reshape(-1)

    def values_at(sl: slice, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:  # a fresh fp32 tensor: m[sl].float() may be m itself, which must not change
            out = torch.empty(m[sl].shape, dtype=torch.float32, device=m.device)
        return out.copy_(m[sl]).sub_(b[sl]).abs_()

    return _select_kth_largest(n, k, values_at, base.device)


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """``tau`` with all but its ``ceil(density * numel)`` largest-magnitude elements set to 0.

    The threshold is the k-th largest |tau| (:func:`kth_largest`); elements tied with it are all
    kept, so a tensor with repeated magnitudes may keep slightly more than k. density >= 1 keeps
    everything, density <= 0 nothing. Shapes and dtype are kept.
    """
    n = tau.numel()
    k = min(n, max(0, math.ceil(density * n - 1e-9)))
    if k >= n:
        return tau
    if k == 0:
        return torch.zeros_like(tau)
    return _trim_top_k_(tau.clone(), k)


def _trim_top_k_(tau: torch.Tensor, k: int) -> torch.Tensor:
    """In place: zero all but the ``k`` (0 < k < numel) largest-magnitude elements of ``tau``."""
    mag = tau.abs()
    threshold = kth_largest(mag.reshape(-1), k)  # an fp32 value, compared exactly
    return tau.masked_fill_(mag < threshold, 0.0)


def disjoint_merge(deltas: Sequence[torch.Tensor] | torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """TIES' sign election and disjoint mean over weighted task vectors ``deltas`` (w_i * tau_i).

    sign = sign(sum_i deltas_i); an element of delta_i counts when it is non-zero and has that sign;
    result = sum of counted deltas / sum of the counted models' weights (0 where none counts), so
    equal weights give the paper's disjoint mean (Yadav et al. 2023, arXiv:2306.01708, eq. 2-3;
    the weight normalisation is mergekit's ``ties`` with ``normalize``).
    ``deltas``: same-shape fp32 tensors, or one tensor stacked along a new dim 0 (one pass per step
    over all models instead of one per model: most keys are small and per-op overhead dominates).
    A NaN in a delta gives NaN there (the callers then refuse the key), never a silent 0.
    """
    d = deltas if isinstance(deltas, torch.Tensor) else torch.stack(list(deltas))
    sign = d.sum(0).sign_()
    # 1.0 where an element is non-zero and of the elected sign (sign is -1, 0 or +1), else 0.0
    agree = torch.mul(d, sign).gt_(0.0)
    w = torch.tensor(list(weights), dtype=d.dtype, device=d.device)
    den = (w @ agree.reshape(len(w), -1)).reshape(d.shape[1:])  # a matrix product: one fast pass
    num = agree.mul_(d).sum(0)
    if min(weights) > 0.0:  # den is 0 or at least the smallest weight, and num is 0 (or NaN) where den is 0
        return num.div_(den.clamp_(min=min(weights)))
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), num * 0.0)


_PIECEWISE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp32 arithmetic on them is exact upcasting


def _ties(ts: Sequence[torch.Tensor], p: BlockParams, ctx: KeyContext) -> torch.Tensor:
    if any(t.dtype not in _PIECEWISE_DTYPES for t in ts):  # fp8 has no arithmetic, fp64 must round first
        ts = [t.float() for t in ts]
    base = ts[0]
    used = [(m, w) for m, w in zip(ts[1:], p.weights, strict=True) if w != 0.0]
    if not used:
        return base.float().clone()
    n = base.numel()
    k = min(n, max(0, math.ceil(p["density"] * n - 1e-9)))  # as trim_top_k
    # Only the trim thresholds need the whole task vectors (one counting pass each); the rest is
    # elementwise and runs in cache-sized pieces, so the memory stays near one copy of the key.
    if k >= n:
        thresholds = [0.0] * len(used)  # |x| >= 0 keeps everything (and NaN * 0 stays NaN)
    elif k == 0:
        thresholds = [math.inf] * len(used)  # keep nothing
    else:
        thresholds = [kth_largest_magnitude(m, base, k) for m, _ in used]
    weights = [w for _, w in used]
    # per model (a column): 1 * w_i where |tau_i| >= its threshold, else 0 * w_i
    thr = torch.tensor(thresholds, dtype=torch.float32, device=base.device).reshape(-1, 1)
    wcol = torch.tensor(weights, dtype=torch.float32, device=base.device).reshape(-1, 1)
    out = torch.empty(base.shape, dtype=torch.float32, device=base.device)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    flats = [m.reshape(-1) for m, _ in used]
    chunk = _CHUNK if base.device.type == "cpu" else 1 << 22  # a GPU wants big launches
    for s in range(0, n, chunk):
        b = flat_base[s : s + chunk].float()  # sources may come in their stored dtype
        # the task vectors stacked along dim 0: each step below is one op over all models
        d = torch.stack([f[s : s + chunk] for f in flats]).float().sub_(b)
        d.mul_(d.abs().ge_(thr).mul_(wcol))  # trim (whole-tensor thresholds) and weight
        torch.add(b, disjoint_merge(d, weights).mul_(p["lambda"]), out=flat_out[s : s + chunk])
    return out


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
    model_weights=True, elementwise=False, stored_dtype=True, aliases=("TIES-merging", "ties-sum"),
    weight_range=(0.0, math.inf),
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
