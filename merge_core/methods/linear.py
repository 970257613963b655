"""The linear methods: A1111's and SuperMerger's merge modes and the search's affine form.

A1111/SuperMerger convention throughout: alpha = 0 gives model A. Each is linear in its sources,
so both engines run them through their fused linear paths (``coefficients_fn``).
"""

from __future__ import annotations

from .registry import BlockParams, MergeMethod, Param, register

_ALPHA = Param("alpha", 0.5, doc="weight of B (0 = model A)")
_BETA = Param("beta", 0.25, doc="weight of C")


def _unused(*_args):  # linear methods never reach fn: the engines use their coefficients
    raise AssertionError("linear methods are computed from their coefficients")


def _affine(p: BlockParams, n: int) -> tuple[float, ...]:
    return (1.0 - sum(p.weights), *p.weights)


for _m in (
    MergeMethod(
        "weighted-sum", "(1-a)A + aB", "A1111 Checkpoint Merger", _unused, ("A", "B"), (_ALPHA,),
        aliases=("Weight sum", "Weighted sum", "normal"),
        coefficients_fn=lambda p, n: (1.0 - p["alpha"], p["alpha"]),
        summary="interpolate two models",
    ),
    MergeMethod(
        "add-difference", "A + a(B - C)", "A1111 Checkpoint Merger", _unused, ("A", "B", "C"), (_ALPHA,),
        aliases=("Add difference", "Add"),
        coefficients_fn=lambda p, n: (1.0, p["alpha"], -p["alpha"]),
        summary="add what B learned over C to A",
    ),
    MergeMethod(
        "triple-sum", "(1-a-b)A + aB + bC", "SuperMerger merge modes", _unused, ("A", "B", "C"), (_ALPHA, _BETA),
        aliases=("Triple sum",),
        coefficients_fn=lambda p, n: (1.0 - p["alpha"] - p["beta"], p["alpha"], p["beta"]),
        summary="weighted sum of three models",
    ),
    MergeMethod(
        "sum-twice", "(1-b)((1-a)A + aB) + bC", "SuperMerger merge modes", _unused, ("A", "B", "C"),
        (_ALPHA, _BETA),
        aliases=("sum Twice",),
        coefficients_fn=lambda p, n: ((1 - p["beta"]) * (1 - p["alpha"]), (1 - p["beta"]) * p["alpha"], p["beta"]),
        summary="weighted sum of A and B, then with C",
    ),
    MergeMethod(
        "affine", "base(1 - sum w_i) + sum w_i M_i", "mergesearch's search space", _unused, (), (),
        model_weights=True, coefficients_fn=_affine,
        summary="base plus weighted task vectors (the search's linear form)",
    ),
):
    register(_m)
