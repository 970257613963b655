"""The closing table: the best trial against each parent and the uniform merge, search and holdout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class Row:
    label: str
    trial: int
    search: float | None
    holdout: float | None
    categories: dict[str, float]


def result_rows(trials: Sequence[FrozenTrial]) -> list[Row]:
    """Best trial first, then the baselines (latest completed trial of each label)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return []

    def row(label: str, t: FrozenTrial) -> Row:
        search = t.user_attrs.get("tag_recall_raw", t.value)
        return Row(label, t.number, search, t.user_attrs.get("holdout"), dict(t.user_attrs.get("categories", {})))

    best = max(complete, key=lambda t: t.value)
    rows = [row("best", best)]
    baselines: dict[str, FrozenTrial] = {}
    for t in complete:
        if "baseline" in t.user_attrs:
            baselines[t.user_attrs["baseline"]] = t
    order = sorted(baselines, key=lambda s: (s == "uniform", s))
    rows += [row(label, baselines[label]) for label in order]
    return rows


def format_table(rows: Sequence[Row]) -> str:
    if not rows:
        return "no completed trial yet"
    width = max(len(r.label) for r in rows) + 2
    cats = sorted({c for r in rows for c in r.categories})

    def f(x: float | None) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    head = f"{'':{width}}{'trial':>6}  {'search':>6}  {'holdout':>7}  " + "  ".join(f"{c[:9]:>9}" for c in cats)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:{width}}{r.trial:>6}  {f(r.search)}  {f(r.holdout):>7}  "
                     + "  ".join(f"{f(r.categories.get(c)):>9}" for c in cats))
    best = rows[0]
    others = [r for r in rows[1:] if r.holdout is not None and r.trial != best.trial]
    if len(others) < len(rows) - 1:
        lines.append(f"the best trial is a baseline ({next(r.label for r in rows[1:] if r.trial == best.trial)})")
    elif best.holdout is not None and others:
        top = max(others, key=lambda r: r.holdout)
        verdict = "beats" if best.holdout > top.holdout else "does not beat"
        lines.append(f"holdout: best trial {best.trial} {verdict} every baseline "
                     f"({best.holdout:.3f} vs {top.label} {top.holdout:.3f}, {best.holdout - top.holdout:+.3f})")
    lines.append("(categories: search split)")
    return "\n".join(lines)
