"""Progress summary and closing table from stored trials alone (pure functions)."""

from datetime import datetime, timedelta

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.progress import format_summary, summarize
from search.results import format_table, result_rows

T0 = datetime(2026, 1, 1, 12, 0, 0)
D = {"IN.a": FloatDistribution(0, 1)}


def trial(number, state, value=None, minutes=0, **attrs):
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params={"IN.a": 0.5},
                     distributions=D, user_attrs=attrs)
    t.number = number
    t.datetime_start = T0 + timedelta(minutes=minutes)
    t.datetime_complete = None if state in (TrialState.RUNNING, TrialState.WAITING) else \
        T0 + timedelta(minutes=minutes + 1)
    return t


def test_summary_counts_rate_and_eta():
    trials = [
        trial(0, TrialState.COMPLETE, 0.5, 0, baseline="parent:base", holdout=0.48),
        trial(1, TrialState.COMPLETE, 0.6, 1, baseline="uniform", holdout=0.55),
        trial(2, TrialState.PRUNED, minutes=2, saved_seconds=3.0),
        trial(3, TrialState.FAIL, minutes=3, requeued=True),  # retried: not counted
        trial(4, TrialState.COMPLETE, 0.7, 4, holdout=0.66),
        trial(5, TrialState.FAIL, minutes=5, fail_reason="non-finite"),
        trial(6, TrialState.RUNNING, minutes=6),
    ]
    s = summarize(trials, budget_trials=20, now=(T0 + timedelta(minutes=7)).timestamp())
    assert (s.complete, s.pruned, s.failed, s.retried, s.running) == (3, 1, 1, 1, 1)
    assert s.best_number == 4 and s.best_value == 0.7 and s.best_holdout == 0.66
    # 5 trials finished between 12:00 and 12:06 -> 50 per hour; 15 to go -> 18 minutes
    assert abs(s.trials_per_hour - 50) < 1e-9 and abs(s.eta_seconds - 18 * 60) < 1e-6
    line = format_summary(s)
    assert line.startswith("done 5/20 (complete 3, pruned 1, failed 1, retried 1) | running 1 | best 0.7000 "
                           "(trial 4, holdout 0.6600) | 50 trials/h | ETA 18m00s")


def test_table_best_against_baselines():
    trials = [
        trial(0, TrialState.COMPLETE, 0.5, baseline="parent:base", holdout=0.48, categories={"shape": 0.5}),
        trial(1, TrialState.COMPLETE, 0.45, baseline="parent:a", holdout=0.50, categories={"shape": 0.4}),
        trial(2, TrialState.COMPLETE, 0.6, baseline="uniform", holdout=0.55, categories={"shape": 0.6}),
        trial(3, TrialState.COMPLETE, 0.7, holdout=0.66, categories={"shape": 0.7}),
    ]
    rows = result_rows(trials)
    assert [r.label for r in rows] == ["best", "parent:a", "parent:base", "uniform"]
    text = format_table(rows)
    assert "holdout: best trial 3 beats every baseline (0.660 vs uniform 0.550, +0.110)" in text
