"""Build a run folder with `mergesearch search`'s own machinery (study set-up, loop, trial-record writer,
run.json, contact sheets as artifacts), scoring with the caller's function instead of rendering:
stand-ins for the review code, or real benchmark scores."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from merge_core import Recipe, Source

Scores = dict[str, object]  # {"value", "categories", "holdout", "holdout_categories"}


def contact_sheet_png(path: Path, seed: int, n: int = 8) -> Path:
    """A grid of toy-world images (real drawings of tag scenes), upscaled like a contact sheet."""
    from benchmark.toyworld import world

    scenes = world.indices_to_scenes(world.sample_indices(n, seed))
    tiles = [im.resize((64, 64), Image.NEAREST) for im in world.draw(scenes, seed)]
    sheet = Image.new("RGB", (4 * 66 + 2, ((n + 3) // 4) * 66 + 2), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (2 + (i % 4) * 66, 2 + (i // 4) * 66))
    sheet.save(path)
    return path


def affine_recipe(sources: list[Source], weights: np.ndarray, family: str = "sd1", dtype: str = "fp32") -> Recipe:
    """weights: [n_weight_ids, n_sources - 1] (affine over the base = sources[0])."""
    from merge_core import layout_for

    ids = layout_for(family).weight_ids
    return Recipe(family=family, method="affine", sources=tuple(sources),
                  weights={wid: tuple(float(x) for x in weights[i]) for i, wid in enumerate(ids)}, dtype=dtype)


class StandinPool:
    """The search's worker interface (search.workers.WorkerPool) in this process, scoring each recipe
    with the caller's `score`; trial number `fail_number` 'renders NaN' (a failed trial)."""

    size = 1

    def __init__(self, score: Callable[[Recipe], Scores], root: Path, fail_number: int) -> None:
        self.score, self.root, self.fail_number = score, root, fail_number
        self._pending = []

    def idle(self) -> int:
        return 0 if self._pending else 1

    def submit(self, task) -> None:
        self._pending.append(task)

    def in_flight(self):
        return list(self._pending)

    def close(self) -> None:
        self._pending.clear()

    def poll(self, timeout: float):
        from search.tasks import EvalResult

        if not self._pending:
            return []
        task = self._pending.pop(0)
        head = dict(task_id=task.task_id, trial_number=task.trial_number, split=task.split, worker="local-0",
                    render_seconds=0.5 + 0.1 * task.trial_number)
        if task.trial_number == self.fail_number:
            return [EvalResult(**head, status="failed", error="NaN in the decoded images")]
        result = self.score(Recipe.model_validate_json(task.recipe))
        if task.split == "search":
            value, cats, sheet = result["value"], result["categories"], _webp_sheet(self.root, task.trial_number)
        else:
            value, cats, sheet = result["holdout"], result["holdout_categories"], None
        prompts = tuple(float(v) for v in cats.values())  # stand-in per-prompt scores (one per category)
        from search.trial_record import standard_error

        return [EvalResult(**head, status="ok", value=float(value), categories=dict(cats), sheet=sheet,
                           se=standard_error(prompts), prompt_scores=prompts, intermediate=(float(value),))]


def _webp_sheet(root: Path, seed: int) -> bytes:
    png = contact_sheet_png(root / f".sheet-{seed}.png", seed=seed)
    try:
        buf = io.BytesIO()
        Image.open(png).save(buf, format="WEBP", quality=70)
        return buf.getvalue()
    finally:
        png.unlink()


def build_run(
    root: Path,
    sources: list[Source],
    score: Callable[[Recipe], Scores],
    *,
    n_sampled: int = 4,
    seed: int = 0,
    config: dict | None = None,
) -> Path:
    """runs/<name>/ made by the search itself (search.runner.run_search: the real study set-up, loop and
    trial-record writer) over `sources`, with the stand-in scores: baselines (each parent, uniform),
    n_sampled random trials and one failed trial. Only the evaluator is a stand-in."""
    from search.config import parse_config
    from search.runner import Prepared, run_search
    from search.space import SearchSpace
    from search.storage import make_storage
    from search.workers import EvaluatorSpec

    root = Path(root)
    names = [s.name for s in sources]
    cfg = {
        "name": root.name, "runs_dir": str(root.parent),
        "models": [{"name": s.name, "path": s.path} for s in sources],
        "space": {"default_bounds": [-0.3, 1.2]},
        "objective": {"vocabulary": "toyworld", "n": 8, "m": 3, "seed": 0, "tagger": "toyworld"},
        "sampler": "random", "seed": seed, "budget": {"trials": len(sources) + 1 + n_sampled + 1},
        "pruner": {"enabled": False}, "storage": f"sqlite:///{root / 'study.db'}",
        **(config or {}),
    }
    config_obj = parse_config(cfg)
    from merge_core import layout_for

    layout = layout_for("sd1")
    space = SearchSpace.build(config_obj.space, tuple(names), tuple(layout.blocks), tuple(layout.components))
    prepared = Prepared(config=config_obj, config_text="", family="sd1", sources=tuple(sources), space=space,
                        prompt_set=SimpleNamespace(hash="feedfacecafe0001", splits={"search": (), "holdout": (), "confirm": ()}),
                        storage=make_storage(config_obj.storage_url), evaluator=EvaluatorSpec())
    pool = StandinPool(score, root, fail_number=len(sources) + 1 + n_sampled)
    run_search(prepared, pool=pool)
    return root


def standin_score(recipe: Recipe) -> Scores:
    """Deterministic scores from the recipe's weights: smooth, with an optimum inside the simplex.
    They stand in for benchmark scores where the review code only needs numbers of the right shape."""
    c = np.array([np.mean([recipe.coefficients()[w][j] for w in recipe.weights]) for j in range(len(recipe.sources))])
    cats = ("colour", "shape", "size", "position", "background")
    target = np.linspace(0.6, 0.2, len(c))
    target = target / target.sum()
    base = float(np.clip(0.9 - 1.5 * np.square(c - target).sum(), 0, 1))
    per = {cat: round(float(np.clip(base + 0.05 * np.sin(3 * i + 5 * c[-1]), 0, 1)), 4) for i, cat in enumerate(cats)}
    held = {cat: round(v * 0.97, 4) for cat, v in per.items()}
    return {"value": float(np.mean(list(per.values()))), "categories": per,
            "holdout": float(np.mean(list(held.values()))), "holdout_categories": held}
