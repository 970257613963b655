"""Stand-ins behind the worker's Evaluator interface whose score is a known function of the recipe.

Used only by tests of the study/loop/worker machinery; the product path uses search.evaluator."""

from __future__ import annotations

import math
import time

from merge_core import Recipe
from search.tasks import EvalResult, EvalTask

# the best merge: base 0.2, partner a 0.5, partner b 0.3 in every block
TARGET = (0.2, 0.5, 0.3)


def score_of(recipe: Recipe, split: str = "search") -> float:
    target = TARGET if split == "search" else (0.25, 0.45, 0.3)
    coeffs = recipe.coefficients()
    err = sum(sum((c - t) ** 2 for c, t in zip(cs, target, strict=True)) for cs in coeffs.values()) / len(coeffs)
    return 1.0 - err


class FakeEvaluator:
    """Renders nothing: sleeps `batch_seconds` per batch and scores by distance to TARGET.

    nan_above: a candidate whose IN00 coefficient of source 1 exceeds this 'renders NaN';
    crash_above: one whose M00 coefficient of source 1 exceeds this raises (a crashed worker)."""

    def __init__(self, batches: int = 3, batch_seconds: float = 0.01, nan_above: float | None = None,
                 crash_above: float | None = None) -> None:
        self.batches, self.batch_seconds, self.nan_above = batches, batch_seconds, nan_above
        self.crash_above = crash_above

    def evaluate(self, task: EvalTask) -> EvalResult:
        recipe = Recipe.model_validate_json(task.recipe)
        value = score_of(recipe, task.split)
        base = dict(task_id=task.task_id, trial_number=task.trial_number, split=task.split)
        if self.nan_above is not None and recipe.coefficients()["IN00"][1] > self.nan_above:
            return EvalResult(**base, status="failed", error="non-finite pixels in 4 of 4 images")
        if self.crash_above is not None and recipe.coefficients()["M00"][1] > self.crash_above:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        partial, t0 = [], time.perf_counter()
        for step in range(self.batches):
            time.sleep(self.batch_seconds)
            partial.append(value)
            bar = task.prune_below[step] if step < len(task.prune_below) else None
            if bar is not None and value < bar:
                left = self.batches - step - 1
                return EvalResult(**base, status="pruned", intermediate=tuple(partial),
                                  render_seconds=time.perf_counter() - t0, saved_seconds=left * self.batch_seconds)
        assert math.isfinite(value)
        return EvalResult(**base, status="ok", value=value, categories={"shape": value, "colour": value - 0.01},
                          intermediate=tuple(partial), render_seconds=time.perf_counter() - t0, sheet=b"RIFF0000WEBP")


class NoisyEvaluator:
    """Known true scores plus known noise: every prompt of every split scores
    ``true + N(0, noise)``, with independent noise per (trial, split, prompt); ``true`` is
    `score_of(recipe)` on the search target for every split, so a trial's true quality is one number."""

    def __init__(self, prompts: int = 32, noise: float = 0.15, seed: int = 0, confirm_prompts: int | None = None,
                 fail_every: int | None = None) -> None:
        self.prompts, self.noise, self.seed, self.fail_every = prompts, noise, seed, fail_every
        self.confirm_prompts = prompts if confirm_prompts is None else confirm_prompts

    @staticmethod
    def true_score(recipe: Recipe) -> float:
        return score_of(recipe, "search")

    def evaluate(self, task: EvalTask) -> EvalResult:
        import numpy as np

        recipe = Recipe.model_validate_json(task.recipe)
        if self.fail_every and task.split == "search" and task.trial_number % self.fail_every == self.fail_every - 1:
            return EvalResult(task_id=task.task_id, trial_number=task.trial_number, split=task.split,
                              status="failed", error="non-finite pixels")
        rng = np.random.default_rng([self.seed, task.trial_number, ("search", "holdout", "confirm").index(task.split)])
        n = self.confirm_prompts if task.split == "confirm" else self.prompts
        per_prompt = self.true_score(recipe) + rng.normal(0.0, self.noise, n)
        value = float(per_prompt.mean())
        return EvalResult(task_id=task.task_id, trial_number=task.trial_number, split=task.split, status="ok",
                          value=value, se=float(per_prompt.std(ddof=1) / math.sqrt(n)),
                          prompt_scores=tuple(float(x) for x in per_prompt), categories={"shape": value},
                          intermediate=(value,))
