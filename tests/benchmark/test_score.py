"""Score maths on hand-made decision matrices."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import BenchmarkError, Prompt, Score, Vocabulary, bootstrap_ci, score_tags

V = Vocabulary.build("v", {"colour": ["red", "blue", "green"], "shape": ["circle", "square"], "bg": ["white", "black"]})


def found(*rows: list[str]) -> np.ndarray:
    m = np.zeros((len(rows), len(V.tags)), dtype=bool)
    for i, tags in enumerate(rows):
        for t in tags:
            m[i, V.index[t]] = True
    return m


def test_recall_precision_per_prompt_and_category():
    prompts = [Prompt(tags=("red", "circle"), seed=1), Prompt(tags=("blue", "square", "black"), seed=2)]
    # prompt 0: red found, circle missed (square drawn); prompt 1: blue+square found, bg both found
    s = score_tags(prompts, found(["red", "square", "white"], ["blue", "square", "white", "black"]), V, split="search")
    assert [p.found for p in s.prompts] == [(True, False), (True, True, True)]
    assert [p.recall for p in s.prompts] == [0.5, 1.0]
    assert s.overall == pytest.approx(0.75)
    assert s.categories["colour"].recall == 1.0 and s.categories["colour"].n == 2
    assert s.categories["shape"].recall == 0.5
    # precision counts only the prompted categories: prompt 0 -> colour {red}, shape {square}: 1 of 2
    assert s.prompts[0].precision == 0.5
    assert s.prompts[1].precision == pytest.approx(3 / 4)  # bg: white and black both claimed
    assert s.precision == pytest.approx(4 / 6)
    assert s.categories["bg"].precision == 0.5
    assert s.complete and s.n_prompts == 2
    assert Score.model_validate_json(s.model_dump_json()) == s


def test_partial_score_and_shape_errors():
    prompts = [Prompt(tags=("red",), seed=1)]
    s = score_tags(prompts, found(["red"]), V, split="search", n_total=4)
    assert not s.complete and s.n_total == 4
    with pytest.raises(BenchmarkError, match="decision matrix has shape"):
        score_tags(prompts, np.zeros((1, 3), bool), V, split="search")
    with pytest.raises(BenchmarkError, match="tag 'purple' is not in vocabulary"):
        score_tags([Prompt(tags=("purple",), seed=1)], found([]), V, split="search")


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(3)
    x = rng.random(200)
    lo, hi = bootstrap_ci(x)
    assert (lo, hi) == bootstrap_ci(x)
    assert lo < x.mean() < hi
    se = x.std(ddof=1) / np.sqrt(x.size)  # normal-theory interval for comparison
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5)
