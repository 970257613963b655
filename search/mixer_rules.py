"""Per-key rules in the Mixer: Elemental weights, include/exclude and Adjust on the live pipeline.

For linear methods the Mixer writes whole blocks with fused ops; a recipe with per-key rules then
rewrites only the keys that get other coefficients than their block's (or are held from model A),
and applies Adjust's scale/offset to the first/last UNet layers — the same arithmetic, in the same
order, as the streaming merge (merge_core.merge), so both give the same tensors. Non-linear
methods run key by key anyway and ask :func:`key_vector` / :func:`adjust_ops` directly.

The Mixer's ``keys`` (single-file key -> the live parameters it becomes, with the resident
sources in the same layout) is what both use.
"""

from __future__ import annotations

from typing import Any

import torch


def key_vector(recipe: Any, key: str, block: str) -> tuple[float, ...] | None:
    """The parameters ``key`` is merged with (Elemental, include/exclude applied); None = held from A."""
    if getattr(recipe, "per_key", False):
        return recipe.key_params(key, block)
    return recipe.weights[block]


def adjust_ops(recipe: Any) -> dict[str, tuple[float, tuple[float, ...]]]:
    """{key: (scale, offset)} of the recipe's Adjust, or {} when it has none."""
    adjust = getattr(recipe, "adjust", None)
    return adjust.ops(recipe.family) if adjust is not None and not adjust.off else {}


def _read(entry: Any) -> torch.Tensor:
    """The key's current live value in the single-file layout, as a new fp32 tensor."""
    parts = entry.parts
    if len(parts) == 1 and parts[0].kind != "rows":
        live = parts[0].live
        t = live.reshape(entry.shape) if parts[0].kind == "reshape" else live.T
        return t.to(torch.float32, copy=True)
    return torch.cat([p.live for p in sorted(parts, key=lambda p: p.start)], dim=0).to(torch.float32)


@torch.no_grad()
def apply_key_rules(mixer: Any, recipe: Any) -> None:
    """After the linear block pass: rewrite the keys Elemental / include-exclude / Adjust change."""
    from merge_core import get_method
    from merge_core.adjust import apply_op

    per_key = bool(getattr(recipe, "per_key", False))
    ops = adjust_ops(recipe)
    if not per_key and not ops:
        return
    method = get_method(recipe.method)
    block_coeffs = recipe.coefficients()
    n = mixer.n_sources
    for key, entry in mixer.keys.items():
        held = False
        if per_key:
            params = recipe.key_params(key, entry.block)
            held = params is None
            c = (1.0,) + (0.0,) * (n - 1) if held else method.coefficients(params, n)
            if c != block_coeffs[entry.block]:
                for part in entry.parts:
                    _recompute(part, c)
        if key in ops and not held:
            entry.write(apply_op(_read(entry), ops[key]))


def _recompute(part: Any, c: tuple[float, ...]) -> None:
    """live = sum_j c[j] * source_j, in the streaming merge's order (c0 * x0, then += c_j * x_j)."""
    p = part.live
    srcs = [s.to(p.device) for s in part.sources]
    p.copy_(srcs[0])
    p.mul_(float(c[0]))
    for s, cj in zip(srcs[1:], c[1:], strict=True):
        if cj != 0.0:
            p.add_(s.to(p.dtype), alpha=float(cj))
