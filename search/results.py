"""The closing table: the best trial against each parent and the merge baselines (the uniform merge,
and `uniform:<method>` in a search of another method), on the search,
confirm and holdout splits, with the paired comparisons of `search.comparison` under it.

Read through `search.trial_record`, so a study left by an interrupted or older run (a baseline with
no holdout score, a trial with no categories) prints with dashes and a line saying what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial

from search import trial_record as record
from search.space import is_merge_baseline
from search.trial_record import TrialRecord


@dataclass(frozen=True)
class Row:
    label: str
    trial: int
    search: float | None  # raw tag recall, search split
    holdout: float | None
    categories: dict[str, float]
    objective: float | None = None  # what the sampler maximised (differs from `search` under a penalty)
    holdout_note: str = ""  # why there is no holdout score
    confirm: float | None = None  # confirm split (leaders and baselines only)
    penalised: bool = False  # the study's objective is not the raw recall


def result_rows(trials: Iterable[FrozenTrial] | Sequence[TrialRecord]) -> list[Row]:
    """The reported best first (`trial_record.best`: by confirm score once confirmed), then the
    baselines (latest completed trial of each label)."""
    records = [t if isinstance(t, TrialRecord) else record.read(t) for t in trials]
    best = record.best(records)
    if best is None:
        return []

    penalised = record.penalised_study(records)

    def row(label: str, r: TrialRecord) -> Row:
        return Row(label, r.number, r.search, r.holdout, dict(r.search_categories), r.objective,
                   r.why_no("holdout"), r.confirm, penalised)

    rows = [row("best", best)]
    found = record.baselines(records)
    order = sorted(found, key=lambda s: (is_merge_baseline(s), s))  # parents, then the merge baselines
    rows += [row(label, found[label]) for label in order]
    return rows


def closing_table(records: Sequence[TrialRecord]) -> str:
    """The table `search` ends with and `status` prints: rows, paired comparisons, what is missing."""
    from search.comparison import summary_lines

    return format_table(result_rows(records), record.gaps(records), notes=summary_lines(records))


def format_table(rows: Sequence[Row], gaps: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """Fixed-width table; `gaps`: lines from `trial_record.gaps` saying what the study lacks; `notes`:
    the paired comparisons (`search.comparison.summary_lines`), which replace the unpaired verdict."""
    if not rows:
        return "\n".join(["no completed trial yet", *gaps])
    width = max(len(r.label) for r in rows) + 2
    cats = sorted({c for r in rows for c in r.categories})
    penalised = any(r.penalised for r in rows)

    def f(x: float | None) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    obj = f"{record.OBJECTIVE:>9}  " if penalised else ""
    confirmed = any(r.confirm is not None for r in rows)
    conf = f"{'confirm':>7}  " if confirmed else ""
    head = (f"{'':{width}}{'trial':>6}  {obj}{record.RECALL:>10}  {conf}{'holdout':>7}  "
            + "  ".join(f"{c[:9]:>9}" for c in cats))
    lines = [head, "-" * len(head)]
    for r in rows:
        o = f"{f(r.objective):>9}  " if penalised else ""
        c = f"{f(r.confirm):>7}  " if confirmed else ""
        lines.append(f"{r.label:{width}}{r.trial:>6}  {o}{f(r.search):>10}  {c}{f(r.holdout):>7}  "
                     + "  ".join(f"{f(r.categories.get(c)):>9}" for c in cats))
    paired = [n for n in notes if n.startswith(("confirm:", "holdout:"))]
    lines.extend(notes if paired or any("baseline" in n for n in notes) else [*notes, _verdict(rows)])
    if penalised:
        lines.append(f"({record.OBJECTIVE} = {record.RECALL} less the negative-weight penalty; "
                     + ("the sampler maximises it; the best is the confirmed one)" if confirmed
                        else "the best is chosen by objective)"))
    lines.append(f"({record.RECALL} and categories: search split" + ("; intervals: paired bootstrap 95 % over the "
                 "same prompts and seeds)" if paired else ")"))
    lines.extend(gaps)
    return "\n".join(lines)


def _verdict(rows: Sequence[Row]) -> str:
    best, others = rows[0], [r for r in rows[1:]]
    same = [r for r in others if r.trial == best.trial]
    if same:
        return f"the best trial is a baseline ({same[0].label})"
    if best.holdout is None:
        return f"holdout: best trial {best.trial} has no holdout score ({best.holdout_note})"
    scored = [r for r in others if r.holdout is not None]
    if not scored:
        return "holdout: no baseline has a holdout score yet; nothing to compare the best trial with"
    top = max(scored, key=lambda r: r.holdout)
    every = "every baseline" if len(scored) == len(others) else f"the {len(scored)} baselines with a holdout score"
    verdict = "beats" if best.holdout > top.holdout else "does not beat"
    return (f"holdout: best trial {best.trial} {verdict} {every} "
            f"({best.holdout:.3f} vs {top.label} {top.holdout:.3f}, {best.holdout - top.holdout:+.3f})")
