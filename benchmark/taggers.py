"""Taggers: images + vocabulary -> per-tag probabilities, registered by name.

Contract (every backend): `tag(images, vocabulary) -> np.ndarray[n_images, n_tags]` (columns in
`vocabulary.tags` order) and `thresholds(vocabulary) -> np.ndarray[n_tags]`; a tag counts as
found when its probability reaches its threshold. A backend may instead define
`decide(probs, vocabulary) -> bool array` (the CLIP tagger's top-1-per-category rule).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from benchmark.errors import BenchmarkError
from benchmark.vocabulary import Vocabulary


@runtime_checkable
class Tagger(Protocol):
    name: str

    def tag(self, images: Sequence[Image.Image], vocabulary: Vocabulary) -> np.ndarray: ...


def _lazy(module: str, attr: str) -> Callable[..., Tagger]:
    def factory(**options: Any) -> Tagger:
        return getattr(importlib.import_module(module), attr)(**options)

    factory.__doc__ = f"{module}.{attr}"
    return factory


# Imported on first use: open_clip and timm cost seconds to import and the toy world's tagger
# lives in its own package.
TAGGERS: dict[str, Callable[..., Tagger]] = {
    "clip": _lazy("benchmark.clip_tagger", "ClipTagger"),
    "wd": _lazy("benchmark.wd_tagger", "WDTagger"),
    "toyworld": _lazy("benchmark.toyworld.tagger", "load_tagger"),
}


def get_tagger(name: str, **options: Any) -> Tagger:
    """Build the tagger registered as `name` (options go to its constructor)."""
    if name not in TAGGERS:
        raise BenchmarkError(f"unknown tagger {name!r}; choose one of {sorted(TAGGERS)}")
    return TAGGERS[name](**options)


def thresholds_of(tagger: Any, vocabulary: Vocabulary) -> np.ndarray:
    th = getattr(tagger, "thresholds", None)
    if th is None:
        return np.full(len(vocabulary.tags), 0.5)
    th = th(vocabulary) if callable(th) else th
    th = np.asarray(th, dtype=np.float64)
    if th.shape != (len(vocabulary.tags),):
        raise BenchmarkError(f"tagger {tagger.name!r}: thresholds have shape {th.shape}, "
                             f"expected ({len(vocabulary.tags)},) for vocabulary {vocabulary.name!r}")
    return th


def decide(tagger: Any, probs: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
    """Found-tag matrix (bool) from a tagger's probabilities."""
    if hasattr(tagger, "decide"):
        return np.asarray(tagger.decide(probs, vocabulary), dtype=bool)
    return np.asarray(probs) >= thresholds_of(tagger, vocabulary)[None, :]


def check_probs(tagger: Any, probs: np.ndarray, n_images: int, vocabulary: Vocabulary) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n_images, len(vocabulary.tags)):
        raise BenchmarkError(f"tagger {getattr(tagger, 'name', tagger)!r} returned shape {probs.shape}, expected "
                             f"({n_images} images, {len(vocabulary.tags)} tags of vocabulary {vocabulary.name!r})")
    return probs
