"""How sure the result is: paired comparisons of the reported best with the best parent, the
uniform merge and the method's one-click merge (`uniform:<method>`), on the same prompts and seeds,
with a bootstrap 95 % interval.

Pure: reads `search.trial_record.TrialRecord`s (their per-prompt scores) and returns numbers and
sentences; the closing table, `status`, `report`, the dashboard note and export's provenance all
word the result from here, so they say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from search import trial_record as record
from search.space import is_merge_baseline
from search.trial_record import TrialRecord

LEVEL = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class PairedDiff:
    """Mean of a - b over paired prompts and its bootstrap interval (both in tag-recall units)."""

    diff: float
    low: float
    high: float
    n: int

    @property
    def interval(self) -> str:
        return f"{self.diff:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, seed: int = 0, level: float = LEVEL,
                     resamples: int = RESAMPLES) -> PairedDiff:
    """Percentile bootstrap interval of mean(a - b), resampling prompts (pairs) with replacement.

    a, b: per-prompt scores of two models on the same prompts and seeds (same order, same length).
    Uses scipy.stats.bootstrap on the paired differences (Efron & Tibshirani 1993, ch. 13).
    Raises ValueError when the lengths differ or there are fewer than two prompts.
    """
    from scipy.stats import bootstrap

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores need the same prompts: got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError("a paired interval needs at least two prompts")
    d = x - y
    if np.all(d == d[0]):  # no spread: every resample has the same mean
        return PairedDiff(float(d[0]), float(d[0]), float(d[0]), int(d.size))
    res = bootstrap((d,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    return PairedDiff(float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                      int(d.size))


def verdict(d: PairedDiff, label: str) -> str:
    """Words that say exactly what the interval supports."""
    if d.low > 0:
        return f"beats {label} by {d.interval}"
    if d.high < 0:
        return f"is worse than {label} by {d.interval}"
    return f"not distinguishable from {label} ({d.interval})"


@dataclass(frozen=True)
class Comparison:
    split: str
    best: int  # trial number of the reported best
    other: str  # baseline label
    other_trial: int
    diff: PairedDiff

    @property
    def text(self) -> str:
        return f"{self.split}: trial {self.best} {verdict(self.diff, self.other)}"


def best_parent(baselines: dict[str, TrialRecord], split: str) -> tuple[str, TrialRecord] | None:
    """(label, record) of the parent with the highest score on ``split`` among ``baselines`` (by label,
    as `trial_record.baselines` gives them), or None when no parent is scored there."""
    parents = [(label, r) for label, r in baselines.items() if label.startswith("parent:") and r.score(split) is not None]
    return max(parents, key=lambda p: p[1].score(split)) if parents else None


def comparisons(records: Iterable[TrialRecord], splits: Sequence[str] = ("confirm", "holdout")) -> list[Comparison]:
    """The reported best against the best parent (on that split), the uniform merge and the method's
    one-click merge (`uniform:<method>`), per split, wherever both have per-prompt scores on it.
    Empty when the best is a parent; a merge baseline that is the best is compared with the others."""
    records = list(records)
    best = record.best(records)
    if best is None or (best.baseline or "").startswith("parent:"):
        return []
    found = record.baselines(records)
    merges = sorted(label for label in found if is_merge_baseline(label))
    out = []
    for split in splits:
        mine = best.prompts(split)
        if not mine:
            continue
        others = []
        parent = best_parent(found, split)
        if parent:
            others.append(parent)
        others += [(label, found[label]) for label in merges if label != best.baseline]
        for label, r in others:
            theirs = r.prompts(split)
            if theirs and len(theirs) == len(mine):
                out.append(Comparison(split, best.number, label, r.number, paired_bootstrap(mine, theirs)))
    return out


def summary_lines(records: Iterable[TrialRecord]) -> list[str]:
    """One line per comparison, plus how the best was chosen (for tables, status, report, notes)."""
    records = list(records)
    best = record.best(records)
    if best is None:
        return []
    if best.confirm is not None:
        how = (f"best = trial {best.number}, chosen by its score over the search and confirm prompts "
               f"({best.confirmed_score:.3f}; confirm split alone {best.confirm:.3f})")
    else:
        how = f"best = trial {best.number}, the highest search score (no trial confirmed yet)"
    if (best.baseline or "").startswith("parent:"):
        return [how, f"the best trial is a baseline ({best.baseline}): no merge beat it"]
    lines = [how]
    if best.baseline:
        lines.append(f"the best trial is the baseline {best.baseline}: no searched trial beat it")
    lines += [c.text for c in comparisons(records)]
    return lines
