"""The merge-method registry: one entry per method, shared by the streaming merger and the Mixer.

A method is a pure function over the fp32 tensors of one key (one per source, same shape) and
the method's parameters for that key's block; it returns the merged fp32 tensor. The entry
declares everything both engines and the command line need: names and spellings, sources and
their roles, parameters with defaults and valid ranges, whether it can run chunk by chunk
(``elementwise``), whether it is random (then it takes a seed), and, for methods linear in the
sources, the coefficients that feed the engines' fused fast paths.

A recipe stores, for every weight id (block or component), one vector of numbers: first one
weight per non-base source when the method has ``model_weights`` (the search's affine form and
the task-vector methods), then the named parameters in declaration order.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch


@dataclass(frozen=True)
class Param:
    """One named method parameter: its default and the closed range of valid values."""

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    doc: str = ""

    def check(self, value: float, where: str) -> None:
        if not (self.low <= value <= self.high):
            raise ValueError(
                f"{self.name} = {value:g} in {where} is outside its range [{self.low:g}, {self.high:g}]; "
                f"choose a value in that range (default {self.default:g})"
            )


@dataclass(frozen=True)
class KeyContext:
    """What a method knows about the key it merges.

    key: the single-file key (e.g. ``model.diffusion_model.out.2.weight``); random methods derive
    their per-key stream from it, so both engines draw the same numbers.
    shape: the whole tensor's shape (an elementwise method may see a flat chunk of it).
    offset: index of the chunk's first element in the flattened tensor (0 for whole tensors).
    seed: the recipe's seed (random methods only).
    state: what the method's ``prepare`` pass computed over the whole model (or None).
    """

    key: str
    shape: tuple[int, ...]
    offset: int = 0
    seed: int | None = None
    state: Any = None


@dataclass(frozen=True)
class BlockParams:
    """A method's parameters for one block: model weights and named values."""

    weights: tuple[float, ...]
    values: Mapping[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


MethodFn = Callable[[Sequence[torch.Tensor], BlockParams, KeyContext], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method (see the module docstring for the parameter layout).

    fn(tensors, params, ctx) -> fp32 tensor of tensors[0]'s shape. ``tensors`` are fp32, one per
    source in recipe order, whole tensors or (``elementwise``) aligned flat chunks of them; a
    ``stored_dtype`` method may instead get whole tensors in the dtype they are stored in (it upcasts
    piece by piece itself, so the file merger holds no fp32 copy of every source of a large key).
    coefficients(params, n) -> one coefficient per source: set only for methods linear in the
    sources; the engines then use their fused linear paths and never call ``fn``.
    prepare(pairs) -> state: an optional whole-model pass over ``(key, fp32 tensors)`` pairs, run
    once before merging (the cosine calc modes' similarity range); its result reaches ``fn`` as
    ``ctx.state``.
    """

    name: str
    formula: str
    source: str
    fn: MethodFn
    roles: tuple[str, ...] = ("A", "B")  # what each source is; () with model_weights: base + any number
    params: tuple[Param, ...] = ()
    model_weights: bool = False
    elementwise: bool = True
    random: bool = False
    aliases: tuple[str, ...] = ()
    coefficients_fn: Callable[[BlockParams, int], tuple[float, ...]] | None = None
    prepare: Callable[[Any], Any] | None = None
    summary: str = ""
    skip: Callable[[str], bool] | None = field(default=None)  # keys this method leaves as source 0
    weight_range: tuple[float, float] = (-math.inf, math.inf)  # valid model weights (model_weights only)
    # parameter values under which one-hot model weights give that model back (model_weights methods);
    # the search uses them for components held from one model
    identity: Mapping[str, float] = field(default_factory=dict)
    stored_dtype: bool = False  # whole-tensor method that accepts its sources in any float dtype

    # ---- sources and parameters ------------------------------------------------------------------
    @property
    def n_sources(self) -> int | None:
        """The fixed number of sources, or None for base + any number of models."""
        return None if self.model_weights else len(self.roles)

    @property
    def spelling(self) -> str:
        """The name A1111/SuperMerger users know (the first alias), else the registry name."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def linear(self) -> bool:
        return self.coefficients_fn is not None

    def check_sources(self, n_sources: int) -> None:
        """Raise ValueError unless ``n_sources`` models fit this method."""
        if self.model_weights:
            # a linear form over a base alone is the base (a search of one model and its LoRAs); the
            # task-vector methods need at least one task vector
            if n_sources < (1 if self.linear else 2):
                raise ValueError(f"{self.name} needs a base and at least one more model, got {n_sources}")
        elif n_sources != len(self.roles):
            raise ValueError(
                f"{self.name} merges {len(self.roles)} model(s) ({' '.join(self.roles)}), got {n_sources}"
            )

    def n_params(self, n_sources: int) -> int:
        """Length of the per-block vector for ``n_sources`` models."""
        return (n_sources - 1 if self.model_weights else 0) + len(self.params)

    def param_names(self, n_sources: int) -> tuple[str, ...]:
        weights = tuple(f"w{i}" for i in range(1, n_sources)) if self.model_weights else ()
        return weights + tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def split(self, vector: Sequence[float], n_sources: int, where: str = "a block") -> BlockParams:
        """The per-block vector as weights + named values; raises ValueError on length or range."""
        self.check_sources(n_sources)
        n = self.n_params(n_sources)
        if len(vector) != n:
            raise ValueError(
                f"{self.name} takes {n} value(s) per block ({', '.join(self.param_names(n_sources))}), "
                f"{where} has {len(vector)}"
            )
        k = n - len(self.params)
        lo, hi = self.weight_range
        for i, w in enumerate(vector[:k], start=1):
            if not lo <= float(w) <= hi:
                raise ValueError(
                    f"model weight w{i} = {float(w):g} in {where} is outside [{lo:g}, {hi:g}] for {self.name}; "
                    f"use weights in that range"
                )
        values = {}
        for p, v in zip(self.params, vector[k:], strict=True):
            p.check(float(v), where)
            values[p.name] = float(v)
        return BlockParams(tuple(float(w) for w in vector[:k]), MappingProxyType(values))

    def coefficients(self, vector: Sequence[float], n_sources: int) -> tuple[float, ...]:
        """One linear coefficient per source for one block (linear methods only)."""
        if self.coefficients_fn is None:
            raise ValueError(f"{self.name} is not linear in its sources; it has no coefficients")
        return tuple(float(c) for c in self.coefficients_fn(self.split(vector, n_sources), n_sources))

    def uses(self, vector: Sequence[float], n_sources: int) -> tuple[bool, ...]:
        """Which sources this block's merge reads (a source with weight 0 need not hold the key)."""
        if self.linear:
            return tuple(c != 0.0 for c in self.coefficients(vector, n_sources))
        if self.model_weights:
            bp = self.split(vector, n_sources)
            return (True, *(w != 0.0 for w in bp.weights))
        return (True,) * n_sources

    def apply(self, tensors: Sequence[torch.Tensor], vector: Sequence[float], ctx: KeyContext) -> torch.Tensor:
        """Merge one key (whole tensors, or aligned flat chunks for elementwise methods); fp32 out."""
        bp = self.split(vector, len(tensors))
        if self.skip is not None and self.skip(ctx.key):
            return tensors[0].float()
        if self.linear:
            coeffs = self.coefficients_fn(bp, len(tensors))
            out = tensors[0].float() * coeffs[0] if coeffs[0] != 1.0 else tensors[0].float().clone()
            for t, c in zip(tensors[1:], coeffs[1:], strict=True):
                out.add_(t, alpha=c)
            return out
        return self.fn(tensors, bp, ctx)


# ---- the registry -------------------------------------------------------------------------------
_REGISTRY: dict[str, MergeMethod] = {}
METHODS: Mapping[str, MergeMethod] = MappingProxyType(_REGISTRY)


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to the registry (its name and aliases must be new)."""
    for name in (method.name, *method.aliases):
        if _compact(name) in {_compact(n) for m in _REGISTRY.values() for n in (m.name, *m.aliases)}:
            raise ValueError(f"merge method name {name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def _compact(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")


def canonical_name(name: str) -> str:
    """Registry name for any known spelling ("Weighted sum", "add_difference", "cosineA", "TIES")."""
    compact = _compact(name)
    for method in _REGISTRY.values():
        if compact in {_compact(n) for n in (method.name, *method.aliases)}:
            return method.name
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``; unknown names raise ValueError naming the closest match."""
    key = canonical_name(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    spellings = {n: m.name for m in _REGISTRY.values() for n in (m.name, *m.aliases)}
    close = difflib.get_close_matches(key, list(spellings), n=1, cutoff=0.5)
    hint = f"; did you mean {spellings[close[0]]!r}?" if close else ""
    raise ValueError(f"unknown merge method {name!r}{hint} Known: {', '.join(_REGISTRY)}")
