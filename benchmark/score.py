"""Scores: recall of the prompt's tags (per prompt, per category, overall) with a bootstrap CI.

Pure maths on a boolean decision matrix; no images, no models. Recall asks "did the tagger
find each tag the prompt asked for". Precision is reported beside it, restricted to the
categories the prompt named: a tag the tagger finds in such a category that the prompt did not
ask for (a red circle asked for, a blue one drawn) is a false positive; tags in categories the
prompt left open are not counted, because the prompt left the model free there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from benchmark.errors import BenchmarkError
from benchmark.prompts import Prompt
from benchmark.vocabulary import Vocabulary

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same scores give the same interval every run


class PromptScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    tags: tuple[str, ...]
    seed: int
    found: tuple[bool, ...]
    recall: float
    precision: float | None  # None when the tagger found nothing in the prompt's categories


class CategoryScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    recall: float
    n: int  # prompted tags of this category
    precision: float | None


class Score(BaseModel):
    """One model on one split. `complete` is False for the partial scores of `evaluate_batches`."""

    model_config = ConfigDict(frozen=True)

    split: str
    overall: float
    ci_low: float
    ci_high: float
    precision: float | None
    n_prompts: int
    n_total: int
    complete: bool = True
    categories: dict[str, CategoryScore]
    prompts: tuple[PromptScore, ...]
    extras: dict[str, float] = Field(default_factory=dict)  # later terms: aesthetic, penalties

    @property
    def category_recall(self) -> dict[str, float]:
        return {c: s.recall for c, s in self.categories.items()}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def bootstrap_ci(values: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling prompts (the independent units)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(samples, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return (float(lo), float(hi))


def score_tags(
    prompts: tuple[Prompt, ...] | list[Prompt],
    found: np.ndarray,
    vocabulary: Vocabulary,
    *,
    split: str,
    n_total: int | None = None,
) -> Score:
    """Score `found` (bool[n_images, n_tags], columns in `vocabulary.tags` order) against the prompts."""
    found = np.asarray(found, dtype=bool)
    if found.shape != (len(prompts), len(vocabulary.tags)):
        raise BenchmarkError(
            f"score: decision matrix has shape {found.shape}, expected "
            f"({len(prompts)} prompts, {len(vocabulary.tags)} tags of vocabulary {vocabulary.name!r})"
        )
    idx, cat_of, slices = vocabulary.index, vocabulary.category_of, vocabulary.category_slices
    per_prompt: list[PromptScore] = []
    cat_hits = {c: [0, 0, 0, 0] for c in vocabulary.categories}  # hit, asked, tp, predicted
    tp_all = pred_all = 0
    for i, prompt in enumerate(prompts):
        vocabulary.check_tags(prompt.tags, where=f"prompt {i}")
        hits = tuple(bool(found[i, idx[t]]) for t in prompt.tags)
        tp = pred = 0
        for t, h in zip(prompt.tags, hits, strict=True):
            c = cat_of[t]
            n_pred = int(found[i, slices[c]].sum())
            cat_hits[c][0] += h
            cat_hits[c][1] += 1
            cat_hits[c][2] += h
            cat_hits[c][3] += n_pred
            tp += h
            pred += n_pred
        tp_all += tp
        pred_all += pred
        per_prompt.append(PromptScore(
            index=i, tags=prompt.tags, seed=prompt.seed, found=hits,
            recall=(sum(hits) / len(hits)) if hits else 1.0,
            precision=(tp / pred) if pred else None,
        ))
    recalls = np.array([p.recall for p in per_prompt])
    lo, hi = bootstrap_ci(recalls)
    categories = {
        c: CategoryScore(recall=h / n, n=n, precision=(tp / pr) if pr else None)
        for c, (h, n, tp, pr) in cat_hits.items() if n
    }
    return Score(
        split=split,
        overall=float(recalls.mean()) if recalls.size else math.nan,
        ci_low=lo, ci_high=hi,
        precision=(tp_all / pred_all) if pred_all else None,
        n_prompts=len(prompts),
        n_total=len(prompts) if n_total is None else n_total,
        complete=n_total is None or n_total == len(prompts),
        categories=categories,
        prompts=tuple(per_prompt),
    )


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p
