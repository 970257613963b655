"""`mergesearch report`: the trial table (CSV + Parquet), PNG plots and a terminal summary."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pandas as pd
from pydantic import BaseModel, ConfigDict

from search import trial_record as record
from search.comparison import best_parent
from search.review import plots
from search.review.run import ReviewError, RunFolder
from search.review.trials import (
    METRIC,
    OBJECTIVE,
    baselines,
    block_weights,
    category_frame,
    completed,
    pick_trial,
    trial_recipe,
    trial_table,
    weights_caption,
)
from search.trial_record import TrialRecord


class ReportFiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    table_csv: Path
    table_parquet: Path
    history_png: Path
    weights_png: Path
    categories_png: Path


def references(study: optuna.Study) -> dict[str, float]:
    """Each baseline's objective on the search split, by label ("parent:<name>", "uniform", "uniform:<method>")."""
    return {label: float(t.objective) for label, t in baselines(study).items()}


def compared_trials(study: optuna.Study) -> dict[str, TrialRecord]:
    """The best trial followed by the baselines, labelled for legends and tables."""
    best = pick_trial(study, "best")
    tag = f", {best.baseline}" if best.baseline else ""
    out = {f"best (#{best.number}{tag})": best}
    for label, trial in sorted(baselines(study).items()):
        if trial.number != best.number:  # a baseline can be the best; show it once
            out[f"{label} (#{trial.number})"] = trial
    return out


def category_comparison(study: optuna.Study) -> dict[str, pd.DataFrame]:
    """Per split, a categories x compared-trials frame of scores (empty when nothing was scored)."""
    trials = compared_trials(study)
    result = {}
    for split in ("search", "holdout"):
        frame = pd.DataFrame({label: category_frame(t, split) for label, t in trials.items()})
        result[split] = frame.dropna(how="all")
    return result


def summary(study: optuna.Study) -> str:
    """A small fixed-width table: the best trial against every baseline, both splits."""
    trials = study.get_trials(deepcopy=False)
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    lines = [
        f"study {study.study_name}: {len(trials)} trials ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        + ")"
    ]
    if not completed(study):
        return "\n".join(lines + ["no completed trial yet"])
    rows = []
    penalised = record.penalised_study(completed(study))
    for label, trial in compared_trials(study).items():
        row = {"trial": label}
        if penalised:  # the study maximised recall less a penalty on negative weights
            row[OBJECTIVE] = trial.objective
        row[METRIC] = trial.search
        row["confirm"] = trial.confirm
        row["holdout"] = trial.holdout
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("trial")
    # from the baselines, not the frame's rows: a parent that is the best shows as "best", not "parent:"
    found = baselines(study)
    for column, split, name in ((METRIC, "search", "vs best parent"), ("holdout", "holdout", "holdout vs best")):
        parent = best_parent(found, split)
        if parent is not None:
            frame[name] = (frame[column] - parent[1].score(split)).map(
                lambda v: "-" if pd.isna(v) else f"{v:+.4f}")
    lines.append(frame.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    from search.comparison import summary_lines

    lines.extend(summary_lines(record.read_all(study)))
    if penalised:
        lines.append(f"({OBJECTIVE} = {METRIC} less the negative-weight penalty; the sampler maximises {OBJECTIVE})")
    lines.extend(record.gaps(record.read_all(study)))
    return "\n".join(lines)


def write_report(run: RunFolder, out: Path | None = None) -> tuple[ReportFiles, str]:
    """Write the table and plots for a run (into runs/<name>/report/ by default)."""
    study = run.open_study()
    if not completed(study):
        raise ReviewError(
            f"study {run.study_name!r} in {run.root / 'run.json'} has no completed trial yet; "
            "wait for the search to finish a trial"
        )
    out = Path(out) if out is not None else run.root / "report"
    _check_writable(out)
    table = trial_table(study)

    csv = out / "trials.csv"
    parquet = out / "trials.parquet"
    _atomic_table(table, csv, parquet)

    best = pick_trial(study, "best")
    penalised = record.penalised_study(completed(study))
    history = plots.history_plot(
        table, references(study), out / "history.png", metric=OBJECTIVE,
        ylabel=f"{OBJECTIVE}: {METRIC} − penalty × negative weight" if penalised else METRIC,
    )
    score = (f"{OBJECTIVE} {best.objective:.3f}, {METRIC} {best.search:.3f}" if penalised and best.search is not None
             else f"{METRIC} {best.objective:.3f}")
    recipe = trial_recipe(best)
    weights = plots.weights_plot(
        block_weights(recipe),
        out / "best_weights.png",
        title=f"Best recipe (trial {best.number}, {score}): {weights_caption(recipe)}, per block",
    )
    categories = plots.category_plot(
        category_comparison(study), out / "categories.png", title=f"Per-category {METRIC}: best vs parents"
    )
    files = ReportFiles(
        table_csv=csv, table_parquet=parquet, history_png=history, weights_png=weights, categories_png=categories
    )
    return files, summary(study)


def _check_writable(out: Path) -> None:
    """Fail before drawing anything when the folder cannot take the files (OSError, named)."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _atomic_table(table: pd.DataFrame, csv: Path, parquet: Path) -> None:
    tmp_csv = csv.with_name(f".{csv.name}.tmp")
    tmp_parquet = parquet.with_name(f".{parquet.name}.tmp")
    try:
        table.to_csv(tmp_csv)
        table.to_parquet(tmp_parquet)
        tmp_csv.replace(csv)
        tmp_parquet.replace(parquet)
    finally:  # after a failure, no temporary file is left behind
        tmp_csv.unlink(missing_ok=True)
        tmp_parquet.unlink(missing_ok=True)
