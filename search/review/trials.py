"""Trials of a study as data: pick one, read its recipe, and tabulate them all with pandas.

Everything is read through `search.trial_record` (one reader for every command)."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from search import trial_record as record
from search.review.run import ReviewError
from search.trial_record import OBJECTIVE, RECALL, TrialRecord

METRIC = RECALL  # the raw tag recall; OBJECTIVE is what the sampler maximised


def records(study: optuna.Study) -> list[TrialRecord]:
    return record.read_all(study)


def completed(study: optuna.Study) -> list[TrialRecord]:
    return record.completed(records(study))


def baselines(study: optuna.Study) -> dict[str, TrialRecord]:
    """Completed baseline trials by label ("parent:<name>", "uniform", "uniform:<method>"); a retried baseline's latest
    completion wins, as in the search's closing table."""
    return record.baselines(records(study))


def parent_name(label: str) -> str:
    return label.split(":", 1)[1] if label.startswith("parent:") else label


def pick_trial(study: optuna.Study, which: str | int = "best") -> TrialRecord:
    """The best completed trial (by objective), or trial number N, which must exist and be COMPLETE."""
    all_records = records(study)
    if which == "best":
        best = record.best(all_records)
        if best is None:
            raise ReviewError(
                f"study {study.study_name!r} has no completed trial yet; wait for the search "
                "to finish a trial, or pick one with --trial N"
            )
        return best
    try:
        number = int(which)
    except (TypeError, ValueError):
        raise ReviewError(f"--trial {which!r}: expected 'best' or a trial number") from None
    match = [r for r in all_records if r.number == number]
    if not match:
        raise ReviewError(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(all_records) - 1}); "
            "see `mergesearch report` for the list"
        )
    trial = match[0]
    if not trial.complete:
        raise ReviewError(
            f"trial {number} of study {study.study_name!r} is {trial.state}, not COMPLETE; "
            "pick a completed trial (--trial best picks the best one)"
        )
    return trial


def trial_recipe(trial: TrialRecord):
    """The trial's merge_core.Recipe from its stored recipe JSON."""
    from merge_core import Recipe

    if trial.recipe is None:
        raise ReviewError(
            f"trial {trial.number} has no 'recipe' user attr; it was not written by `mergesearch search`"
        )
    try:
        return Recipe.model_validate_json(trial.recipe)
    except ValueError as exc:
        raise ReviewError(f"trial {trial.number}: user attr 'recipe' is not a valid Recipe ({exc})") from exc


def source_labels(recipe) -> list[str]:
    return [s.name or f"model{i}" for i, s in enumerate(recipe.sources)]


def block_weights(recipe) -> pd.DataFrame:
    """What the recipe sets per block and component (columns: weight ids).

    A linear recipe: one row per source, its linear coefficient. Any other method (TIES, DARE,
    SLERP, calc modes): one row per model weight the method takes (the models after the base) and
    one per method parameter, named after it (``density``, ``lambda``, ``alpha``), with the value
    the recipe gives that block.
    """
    from merge_core.methods import get_method

    if recipe.linear:
        coefficients = recipe.coefficients()
        ids = list(coefficients)
        data = {wid: list(coefficients[wid]) for wid in ids}
        return pd.DataFrame(data, index=source_labels(recipe), columns=ids)
    method = get_method(recipe.method)
    labels = source_labels(recipe)[1:] if method.model_weights else []
    index = [*labels, *(p.name for p in method.params)]
    ids = list(recipe.weights)
    data = {wid: [float(v) for v in recipe.weights[wid]] for wid in ids}
    return pd.DataFrame(data, index=index, columns=ids)


def weights_caption(recipe) -> str:
    """What :func:`block_weights` shows for this recipe, for a figure's title."""
    return "coefficient per model" if recipe.linear else f"{recipe.method}: model weights and parameters"


def _duration(trial: TrialRecord) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_row(trial: TrialRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state,
        OBJECTIVE: trial.objective,
        RECALL: trial.search,
        "search_se": trial.search_se,
        "negative_mass": trial.negative_mass,
        "holdout": trial.holdout,
        "holdout_se": trial.holdout_se,
        "confirm": trial.confirm,
        "confirm_se": trial.confirm_se,
        "baseline": trial.baseline,
        "fail_reason": trial.fail_reason,
        "duration_s": _duration(trial),
        "render_seconds": trial.render_seconds,
        "retry_of": trial.retry_of,
        "worker": trial.worker,
        "missing": ", ".join(trial.missing) or None,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
    }
    row.update({f"param:{k}": v for k, v in trial.params.items()})
    for split in record.SPLITS:
        row.update({f"{split}:{k}": v for k, v in trial.categories(split).items()})
    if trial.recipe is not None:
        try:
            weights = block_weights(trial_recipe(trial))
        except ReviewError:
            weights = None
        if weights is not None:
            for model, series in weights.iterrows():
                row.update({f"weight:{model}:{wid}": float(v) for wid, v in series.items()})
    return row


def trial_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective and raw recall, holdout/confirm, duration, params,
    per-category scores, derived block weights."""
    rows = [trial_row(t) for t in records(study)]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in ("retry_of",):
        table[column] = table[column].astype("Int64")
    return table.set_index("number").sort_index()


def category_frame(trial: TrialRecord, split: str) -> pd.Series:
    return pd.Series(trial.categories(split), dtype=float)
