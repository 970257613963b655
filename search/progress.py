"""Where a search stands: counts, best, trials per hour, ETA. Computed from the stored trials alone,
so `mergesearch status` shows the same from any host; the live view renders the same summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

from search import trial_record as record


@dataclass(frozen=True)
class Summary:
    complete: int
    pruned: int
    failed: int  # failed for good (a failed trial that was re-enqueued is not counted)
    retried: int
    running: int
    waiting: int
    best_value: float | None
    best_number: int | None
    best_holdout: float | None
    trials_per_hour: float | None
    eta_seconds: float | None
    budget_trials: int | None
    saved_seconds: float

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def _ts(d: datetime | None) -> float | None:
    return d.timestamp() if d else None


def summarize(trials: Sequence[FrozenTrial] | Sequence[record.TrialRecord], *, budget_trials: int | None = None,
              budget_hours: float | None = None, now: float | None = None) -> Summary:
    now = time.time() if now is None else now
    trials = [t if isinstance(t, record.TrialRecord) else record.read(t) for t in trials]
    by = {s: [t for t in trials if t.state == s.name] for s in TrialState}
    failed = [t for t in by[TrialState.FAIL] if t.failed_for_good]
    retried = [t for t in by[TrialState.FAIL] if not t.failed_for_good]
    complete = by[TrialState.COMPLETE]
    best = record.best(complete)
    finished = [t for t in trials if t.state in ("COMPLETE", "PRUNED") or t.failed_for_good]
    starts = [_ts(t.datetime_start) for t in trials if t.datetime_start]
    ends = [_ts(t.datetime_complete) for t in finished if t.datetime_complete]
    rate = None
    if len(ends) >= 2 and starts:
        span = max(ends) - min(starts)
        rate = len(ends) / span * 3600 if span > 0 else None
    n_done = len(complete) + len(by[TrialState.PRUNED]) + len(failed)
    eta = None
    if budget_trials is not None and rate:
        eta = max(budget_trials - n_done, 0) / rate * 3600
    if budget_hours is not None and starts:
        left = min(starts) + budget_hours * 3600 - now
        eta = max(left, 0.0) if eta is None else min(eta, max(left, 0.0))
    saved = sum(t.saved_seconds or 0.0 for t in by[TrialState.PRUNED])
    return Summary(
        complete=len(complete), pruned=len(by[TrialState.PRUNED]), failed=len(failed), retried=len(retried),
        running=len(by[TrialState.RUNNING]), waiting=len(by[TrialState.WAITING]),
        best_value=best.objective if best else None, best_number=best.number if best else None,
        best_holdout=best.holdout if best else None, trials_per_hour=rate, eta_seconds=eta,
        budget_trials=budget_trials, saved_seconds=saved)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_summary(s: Summary) -> str:
    budget = f"/{s.budget_trials}" if s.budget_trials else ""
    best = "-" if s.best_value is None else f"{s.best_value:.4f} (trial {s.best_number}"
    if s.best_value is not None:
        best += f", holdout {s.best_holdout:.4f})" if s.best_holdout is not None else ")"
    rate = "?" if s.trials_per_hour is None else f"{s.trials_per_hour:.0f}"
    return (f"done {s.finished}{budget} (complete {s.complete}, pruned {s.pruned}, failed {s.failed}, "
            f"retried {s.retried}) | running {s.running} | best {best} | {rate} trials/h | ETA {_dur(s.eta_seconds)}")


class LiveView:
    """A one-line live status on the terminal (redrawn in place), from the loop's own counters."""

    def __init__(self, *, budget_trials: int | None, budget_hours: float | None, stream=None,
                 interval: float = 1.0) -> None:
        self.budget_trials, self.budget_hours = budget_trials, budget_hours
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    def __call__(self, stats) -> None:
        now = time.time()
        # redraw in place on a terminal; in a log file, one line every 30 s is plenty
        if now - self._last < (self.interval if self._tty else 30.0) and stats.running:
            return
        self._last = now
        elapsed = max(now - stats.started_at, 1e-9)
        rate = stats.finished / elapsed * 3600 if stats.finished else None
        eta = None
        if self.budget_trials is not None and rate:
            eta = max(self.budget_trials - stats.finished_before - stats.finished, 0) / rate * 3600
        if self.budget_hours is not None:
            left = max(self.budget_hours * 3600 - elapsed, 0.0)
            eta = left if eta is None else min(eta, left)
        s = Summary(complete=stats.complete, pruned=stats.pruned, failed=stats.failed, retried=stats.retried,
                    running=stats.running, waiting=0, best_value=stats.best_value, best_number=stats.best_number,
                    best_holdout=stats.best_holdout, trials_per_hour=rate, eta_seconds=eta,
                    budget_trials=self.budget_trials, saved_seconds=stats.saved_seconds)
        line = format_summary(s)
        if getattr(stats, "confirming", 0):  # leaders being re-scored on the confirm/holdout splits
            line += f" | confirming {stats.confirming}"
        if stats.finished_before:
            line = f"[+{stats.finished_before} earlier] " + line
        if self._tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
