"""Build a run folder with a real Optuna study in SQLite, shaped exactly as `mergesearch search` leaves it
(docs/ARCHITECTURE.md): run.json, study and trial user attrs, baselines, a failed trial, contact sheets
as artifacts. Scores come from the caller: stand-ins for the review code, or real benchmark scores."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from PIL import Image

from merge_core import Recipe, Source

STUDY = "toy-review"
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


def build_run(
    root: Path,
    sources: list[Source],
    score: Callable[[Recipe], Scores],
    *,
    n_sampled: int = 4,
    seed: int = 0,
    config: dict | None = None,
) -> Path:
    """runs/<name>/ with baselines (each parent, uniform), n_sampled random trials and one failed trial."""
    from merge_core import layout_for

    root.mkdir(parents=True, exist_ok=True)
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    storage = f"sqlite:///{root / 'study.db'}"
    (root / "run.json").write_text(json.dumps({
        "study_name": STUDY, "storage": storage, "artifact_dir": "artifacts", "config_path": "config.yaml",
    }))
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["tag_recall"])
    config = config or {"name": STUDY, "objective": {"vocabulary": "toyworld", "n": 8, "m": 3, "seed": 0,
                                                     "tagger": "toyworld"}}
    attrs = {
        "config": json.dumps(config), "config_hash": "0123456789abcdef", "family": "sd1",
        "sources": [{"name": s.name, "path": s.path, "sha256": s.sha256} for s in sources],
        "prompt_set_hash": "feedfacecafe0001", "tagger": "toyworld", "sampler": "qmc+gp",
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)

    n_ids, k = len(layout_for("sd1").weight_ids), len(sources) - 1
    plans: list[tuple[str | None, np.ndarray]] = [(f"parent:{sources[0].name}", np.zeros((n_ids, k)))]
    for j, src in enumerate(sources[1:]):
        w = np.zeros((n_ids, k))
        w[:, j] = 1.0
        plans.append((f"parent:{src.name}", w))
    plans.append(("uniform", np.full((n_ids, k), 1.0 / len(sources))))
    rng = np.random.default_rng(seed)
    plans += [(None, rng.uniform(-0.2, 0.8, size=(n_ids, k)) / k) for _ in range(n_sampled)]

    store = FileSystemArtifactStore(str(artifacts))
    for i, (label, w) in enumerate(plans):
        trial = study.ask()
        for g in range(n_ids):
            for j in range(k):
                trial.suggest_float(f"w{j + 1}_{g:02d}", -0.3, 1.2)  # shape of the search's params
        recipe = affine_recipe(sources, w)
        result = score(recipe)
        trial.set_user_attr("recipe", recipe.model_dump_json())
        trial.set_user_attr("categories", result["categories"])
        trial.set_user_attr("holdout", result["holdout"])
        trial.set_user_attr("holdout_categories", result["holdout_categories"])
        trial.set_user_attr("render_seconds", 0.5 + 0.1 * i)
        trial.set_user_attr("worker", "local-0")
        if label:
            trial.set_user_attr("baseline", label)
        sheet = contact_sheet_png(root / f"sheet-{i}.png", seed=i)
        upload_artifact(artifact_store=store, file_path=str(sheet), study_or_trial=trial, mimetype="image/png")
        sheet.unlink()
        study.tell(trial, float(result["value"]))
    failed = study.ask()
    failed.set_user_attr("error", "NaN in the decoded images")
    study.tell(failed, state=TrialState.FAIL)
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
