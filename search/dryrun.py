"""`mergesearch search --dry-run`: what a search will search and what a trial will cost, before it runs.

Prints the space (every dimension with its bounds, the blocks each group moves, the components
held from a model, the parameter count) and, unless told not to, builds one worker's evaluator
exactly as the search would, writes a mid-space candidate into it and renders a few batches of
the search split, to report seconds per trial and trials per hour on this machine. Nothing is
written: no study, no run folder.
"""

from __future__ import annotations

import math
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class CostEstimate:
    """Measured on this machine with the config's own evaluator (one worker)."""

    device: str
    render_batch: int  # prompts per pipeline call
    compile_mode: str
    warmup_seconds: float  # first batch: allocation, cuDNN choices, compilation
    seconds_per_prompt: float  # steady state: render + tag + score
    apply_seconds: float  # writing one candidate into the live modules
    prompts_per_trial: int  # the search split

    @property
    def seconds_per_trial(self) -> float:
        return self.apply_seconds + self.seconds_per_prompt * self.prompts_per_trial

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 / self.seconds_per_trial if self.seconds_per_trial > 0 else math.inf


def describe_space(prepared: Any) -> list[str]:
    """Lines describing the search space of a prepared search (pure: reads `prepared` only)."""
    space = prepared.space
    dims = space.dimensions()
    form = space.parametrisation if space.method == "affine" else f"{space.method} (weights {space.parametrisation})"
    fixed = {k: v for k, v in space.method_params if not isinstance(v, (tuple, list))}
    held = f", fixed {', '.join(f'{k}={v:g}' for k, v in fixed.items())}" if fixed else ""
    lines = [f"space: {form} over {len(space.models)} models (the base is {space.models[0]!r}){held}, "
             f"{len(space.groups)} group(s), {len(dims)} dimension(s)"]
    width = max((len(d.name) for d in dims), default=0)
    for group, ids in space.groups.items():
        lines.append(f"  group {group}: {_ranges(ids, space.weight_ids)}")
        for d in dims:
            if d.name.split(".", 1)[0] == group:
                lines.append(f"    {d.name:<{width}}  [{d.low:g}, {d.high:g}]")
    for comp, model in space.held.items():
        lines.append(f"  {comp}: held from {model}")
    lines.append(f"parameters: {len(dims)}")
    return lines


def _ranges(ids: tuple[str, ...], order: tuple[str, ...]) -> str:
    """'IN00-IN03, M00' for consecutive runs of the layout's order."""
    pos = {w: i for i, w in enumerate(order)}
    out: list[str] = []
    run: list[str] = []
    for w in ids:
        if run and pos.get(w, -2) == pos.get(run[-1], -9) + 1:
            run.append(w)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [w]
    if run:
        out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


def measure_cost(prepared: Any, *, batches: int = 2) -> CostEstimate:
    """Build the config's evaluator, apply a mid-space candidate, render `batches` render batches of the
    search split after one warm-up batch, and extrapolate to a whole trial."""
    from merge_core import Recipe
    from search.workers import build_evaluator

    evaluator = build_evaluator(prepared.evaluator)
    params = {d.name: (d.low + d.high) / 2 for d in prepared.space.dimensions()}
    recipe = Recipe.model_validate_json(prepared.recipe_json(params))
    t0 = time.perf_counter()
    evaluator.mixer.apply(recipe)
    apply_seconds = time.perf_counter() - t0
    bench = evaluator.benchmarks["search"]
    rb = evaluator.render_batch
    warm, _ = _time_prompts(bench, evaluator.renderer, rb)
    seconds, done = _time_prompts(bench, evaluator.renderer, rb * max(1, batches))
    return CostEstimate(device=str(evaluator.renderer.device), render_batch=rb,
                        compile_mode=evaluator.renderer.compile_mode, warmup_seconds=warm,
                        seconds_per_prompt=seconds / max(done, 1), apply_seconds=apply_seconds,
                        prompts_per_trial=len(bench.prompts))


def _time_prompts(bench: Any, renderer: Any, limit: int) -> tuple[float, int]:
    """Seconds until at least `limit` prompts (or the whole split) are rendered, tagged and scored."""
    t0 = time.perf_counter()
    done = 0
    batches = bench.evaluate_batches(renderer)
    with closing(batches):
        for _score, images in batches:
            done = len(images)
            if done >= limit:
                break
    return time.perf_counter() - t0, done


def dry_run(prepared: Any, *, measure: bool = True, batches: int = 2, out: TextIO) -> CostEstimate | None:
    """Print the space and (with `measure`) the measured cost; returns the estimate."""
    config = prepared.config
    w = config.workers
    o = config.objective
    from search.study import sampler_startup

    startup = sampler_startup(prepared.space, config.sampler_startup)
    n_base = len(prepared.space.baselines())
    how = ("" if config.sampler == "random" else
           f" (model-based after {max(startup, n_base)} completed trials, {n_base} of them baselines)")
    print(f"dry run of {config.name}: {len(prepared.sources)} models ({prepared.family}), sampler {config.sampler}{how}, "
          f"budget {config.budget.trials or '-'} trials / {config.budget.hours or '-'} h, "
          f"{w.count} {w.backend} worker(s)", file=out)
    for line in describe_space(prepared):
        print(line, file=out)
    n_search = len(prepared.prompt_set.prompts("search"))
    print(f"benchmark: {n_search} search prompts, score step {o.batch_size}, {o.render.steps} steps, "
          f"tagger {o.tagger}; render.compile {o.render.compile}, overlap {o.render.overlap}, "
          f"batch {o.render.batch}", file=out)
    if not measure:
        return None
    est = measure_cost(prepared, batches=batches)
    print(f"measured on {est.device} (one worker, render batch {est.render_batch}, compile {est.compile_mode}): "
          f"warm-up {est.warmup_seconds:.1f} s, {est.seconds_per_prompt:.3f} s per prompt, "
          f"apply {est.apply_seconds * 1000:.0f} ms", file=out)
    per_hour = est.trials_per_hour
    print(f"  {est.seconds_per_trial:.3f} s per trial (search split, unpruned) = {per_hour:.0f} trials per hour "
          f"per worker", file=out)
    if config.budget.trials:
        hours = config.budget.trials * est.seconds_per_trial / 3600 / max(1, w.count)
        print(f"  budget of {config.budget.trials} trials: about {hours:.2f} h with {w.count} worker(s) if each has "
              "its own device (workers sharing one CPU do not add up); holdout and confirmation re-scores, "
              "pruning and baselines move this", file=out)
    return est
