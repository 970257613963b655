"""The project's one truncated SVD: best rank-r factors of a matrix (Eckart-Young).

Used by the contact merge (repair: A + D_r) and by LoRA extraction and re-factorisation
(D_r stored as kohya ``lora_up @ lora_down``). Large matrices use a randomised SVD
(Halko, Martinsson & Tropp 2011, "Finding structure with randomness", with power
iterations, via ``torch.svd_lowrank``); its error is measured against the exact truncation
in tests.
"""

from __future__ import annotations

import math

import torch

# Exact SVD for small matrices or when the rank is a large share of the smaller side;
# otherwise a randomised SVD (within 1% of the optimal residual in the tests, far faster).
EXACT_LIMIT = 1 << 16
OVERSAMPLE = 10


def low_rank_factors(
    d: torch.Tensor, rank: int, *, exact: bool | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Factors of the best rank-``rank`` approximation of the 2-D fp32 matrix ``d`` [m, n].

    Returns ``(up [m, r], down [r, n], randomized?)`` with ``up @ down = D_r`` and
    ``r = min(rank, m, n)``; the singular values are split evenly (``U sqrt(S)``,
    ``sqrt(S) Vh``) so both factors keep a similar range in fp16. ``rank <= 0`` gives
    empty factors (r = 0). The randomised path is seeded (reproducible) and leaves the
    global RNG as it was.
    """
    if d.dim() != 2:
        raise ValueError(f"low_rank_factors takes a 2-D matrix, got shape {tuple(d.shape)}")
    m, n = d.shape
    k = min(m, n)
    r = max(0, min(rank, k))
    if r == 0:
        return d.new_zeros(m, 0), d.new_zeros(0, n), False
    use_exact = exact if exact is not None else (d.numel() <= EXACT_LIMIT or 2 * (r + OVERSAMPLE) >= k)
    if use_exact:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        root = s[:r].sqrt()
        return u[:, :r] * root, root[:, None] * vh[:r], False
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        u, s, v = torch.svd_lowrank(d, q=min(k, r + OVERSAMPLE), niter=4)
    finally:
        torch.random.set_rng_state(state)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * v[:, :r].T, True


def low_rank(
    d: torch.Tensor, rank: int, *, exact: bool | None = None, seed: int = 0
) -> tuple[torch.Tensor, bool]:
    """Best rank-``rank`` approximation D_r of the 2-D fp32 matrix ``d``; returns (D_r, randomized?).

    ``rank >= min(m, n)`` returns a copy of ``d`` (the truncation keeps everything).
    """
    m, n = d.shape
    if rank <= 0:
        return torch.zeros_like(d), False
    if rank >= min(m, n):
        return d.clone(), False
    up, down, randomized = low_rank_factors(d, rank, exact=exact, seed=seed)
    return up @ down, randomized


def effective_rank_error(d: torch.Tensor, rank: int) -> float:
    """Optimal relative residual ||D - D_r|| / ||D|| of a rank-r truncation (Eckart-Young)."""
    s = torch.linalg.svdvals(d)
    total = float((s**2).sum())
    return math.sqrt(float((s[rank:] ** 2).sum()) / total) if total > 0 else 0.0
