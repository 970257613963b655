"""Trials of a study as data: pick one, read its recipe, and tabulate them all with pandas."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from search.review.run import ReviewError

METRIC = "tag_recall"


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def baselines(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Completed baseline trials by label ("parent:<name>", "uniform"); a retried baseline's latest
    completion wins, as in the search's closing table."""
    found: dict[str, FrozenTrial] = {}
    for trial in completed(study):
        label = trial.user_attrs.get("baseline")
        if label:
            found[label] = trial
    return found


def parent_name(label: str) -> str:
    return label.split(":", 1)[1] if label.startswith("parent:") else label


def pick_trial(study: optuna.Study, which: str | int = "best") -> FrozenTrial:
    """The best completed trial, or trial number N, which must exist and be COMPLETE."""
    done = completed(study)
    if which == "best":
        if not done:
            raise ReviewError(
                f"study {study.study_name!r} has no completed trial yet; wait for the search "
                "to finish a trial, or pick one with --trial N"
            )
        return max(done, key=lambda t: t.value)
    try:
        number = int(which)
    except (TypeError, ValueError):
        raise ReviewError(f"--trial {which!r}: expected 'best' or a trial number") from None
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise ReviewError(
            f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1}); "
            "see `mergesearch report` for the list"
        )
    trial = match[0]
    if trial.state != TrialState.COMPLETE:
        raise ReviewError(
            f"trial {number} of study {study.study_name!r} is {trial.state.name}, not COMPLETE; "
            "pick a completed trial (--trial best picks the best one)"
        )
    return trial


def trial_recipe(trial: FrozenTrial):
    """The trial's merge_core.Recipe from its `recipe` user attr."""
    from merge_core import Recipe

    raw = trial.user_attrs.get("recipe")
    if raw is None:
        raise ReviewError(
            f"trial {trial.number} has no 'recipe' user attr; it was not written by `mergesearch search`"
        )
    text = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        return Recipe.model_validate_json(text)
    except ValueError as exc:
        raise ReviewError(f"trial {trial.number}: user attr 'recipe' is not a valid Recipe ({exc})") from exc


def source_labels(recipe) -> list[str]:
    return [s.name or f"model{i}" for i, s in enumerate(recipe.sources)]


def block_weights(recipe) -> pd.DataFrame:
    """Per-model linear coefficient for every block and component (rows: sources, columns: weight ids)."""
    coefficients = recipe.coefficients()
    ids = list(coefficients)
    data = {wid: list(coefficients[wid]) for wid in ids}
    return pd.DataFrame(data, index=source_labels(recipe), columns=ids)


def _duration(trial: FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        METRIC: trial.value if trial.state == TrialState.COMPLETE else None,
        "tag_recall_raw": attrs.get("tag_recall_raw", trial.value if trial.state == TrialState.COMPLETE else None),
        "negative_mass": attrs.get("negative_mass"),
        "holdout": attrs.get("holdout"),
        "baseline": attrs.get("baseline"),
        "fail_reason": attrs.get("fail_reason"),
        "duration_s": _duration(trial),
        "render_seconds": attrs.get("render_seconds"),
        "retry_of": attrs.get("retry_of"),
        "worker": attrs.get("worker"),
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
    }
    row.update({f"param:{k}": v for k, v in trial.params.items()})
    row.update({f"search:{k}": v for k, v in (attrs.get("categories") or {}).items()})
    row.update({f"holdout:{k}": v for k, v in (attrs.get("holdout_categories") or {}).items()})
    if attrs.get("recipe") is not None:
        try:
            weights = block_weights(trial_recipe(trial))
        except ReviewError:
            weights = None
        if weights is not None:
            for model, series in weights.iterrows():
                row.update({f"weight:{model}:{wid}": float(v) for wid, v in series.items()})
    return row


def trial_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, scores, duration, params, per-category scores, derived block weights."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column in ("retry_of",):
        table[column] = table[column].astype("Int64")
    return table.set_index("number").sort_index()


def category_frame(trial: FrozenTrial, split: str) -> pd.Series:
    key = "categories" if split == "search" else "holdout_categories"
    return pd.Series(trial.user_attrs.get(key) or {}, dtype=float)
