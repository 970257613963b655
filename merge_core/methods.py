"""Merge methods: each is linear in its sources, so a method is a map from per-block
parameters to one coefficient per source (A1111/SuperMerger convention: alpha=0 is model A)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class MergeMethod:
    name: str
    formula: str
    params: tuple[str, ...]  # per-block parameter names; affine: one weight per non-base source
    n_sources: int | None  # None: any number >= 2 (affine)
    _coefficients: Callable[[Sequence[float], int], tuple[float, ...]]

    def n_params(self, n_sources: int) -> int:
        return n_sources - 1 if self.n_sources is None else len(self.params)

    def check_sources(self, n_sources: int) -> None:
        if self.n_sources is None and n_sources < 2:
            raise ValueError(f"{self.name} needs a base and at least one more model, got {n_sources}")
        if self.n_sources is not None and n_sources != self.n_sources:
            names = " ".join("ABCDEFG"[: self.n_sources])
            raise ValueError(f"{self.name} merges {self.n_sources} models ({names}), got {n_sources}")

    def coefficients(self, params: Sequence[float], n_sources: int) -> tuple[float, ...]:
        """One linear coefficient per source for one block."""
        self.check_sources(n_sources)
        if len(params) != self.n_params(n_sources):
            raise ValueError(
                f"{self.name} takes {self.n_params(n_sources)} parameter(s) per block, got {len(params)}"
            )
        return tuple(float(c) for c in self._coefficients(params, n_sources))


def _affine(w: Sequence[float], n: int) -> tuple[float, ...]:
    return (1.0 - sum(w), *w)


_ALL = (
    MergeMethod("weighted-sum", "(1-a)A + aB", ("alpha",), 2, lambda p, n: (1 - p[0], p[0])),
    MergeMethod("add-difference", "A + a(B - C)", ("alpha",), 3, lambda p, n: (1.0, p[0], -p[0])),
    MergeMethod(
        "triple-sum", "(1-a-b)A + aB + bC", ("alpha", "beta"), 3, lambda p, n: (1 - p[0] - p[1], p[0], p[1])
    ),
    MergeMethod(
        "sum-twice",
        "(1-b)((1-a)A + aB) + bC",
        ("alpha", "beta"),
        3,
        lambda p, n: ((1 - p[1]) * (1 - p[0]), (1 - p[1]) * p[0], p[1]),
    ),
    MergeMethod("affine", "base(1 - sum w_i) + sum w_i M_i", ("w",), None, _affine),
)
METHODS: MappingProxyType[str, MergeMethod] = MappingProxyType({m.name: m for m in _ALL})


def canonical_name(name: str) -> str:
    """Accepts A1111 spellings too: "Weighted sum", "add_difference", "SumTwice" -> registry names."""
    n = name.strip().lower().replace("_", "-").replace(" ", "-")
    compact = n.replace("-", "")
    for known in METHODS:
        if known.replace("-", "") == compact:
            return known
    return n


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``; unknown names fail with the closest match."""
    key = canonical_name(name)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, METHODS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown merge method {name!r}{hint} Known: {', '.join(METHODS)}")
