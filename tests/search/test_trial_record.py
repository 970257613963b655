"""The typed trial record: one writer, one reader, a round trip through SQLite and PostgreSQL, and a
reader that never crashes on what a killed, interrupted or older run left behind."""

import math
from datetime import datetime

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search import trial_record as record
from search.results import format_table, result_rows

# one value of the right type for every stored field (none at its default)
FULL = {
    "recipe": '{"method": "affine"}',
    "search": 0.61, "search_se": 0.021, "search_categories": {"shape": 0.5, "colour": 0.72},
    "search_prompts": (0.5, 0.75, 0.58),
    "holdout": 0.57, "holdout_se": 0.03, "holdout_categories": {"shape": 0.45, "colour": 0.69},
    "holdout_prompts": (0.25, 1.0), "holdout_error": "a note",
    "confirm": 0.59, "confirm_se": 0.018, "confirm_categories": {"shape": 0.55}, "confirm_prompts": (0.5, 0.625, 0.75),
    "confirm_error": "another note",
    "negative_mass": 0.2, "baseline": "parent:a", "method_seed": 7, "render_seconds": 1.25, "apply_seconds": 0.01,
    "saved_seconds": 0.5, "worker": "ray-0@host:12", "driver": "host:99", "fail_reason": "crash: boom",
    "requeued": True, "retry_of": 3, "retry_reason": "crash",
}


def test_every_stored_field_has_one_attr_name():
    stored = set(record.ATTRS)
    model = set(record.TrialRecord.model_fields) - {"number", "trial_id", "state", "objective", "params",
                                                     "datetime_start", "datetime_complete", "missing", "invalid"}
    assert stored == model == set(FULL)
    assert len(set(record.ATTRS.values())) == len(record.ATTRS)  # no two fields share an attr


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.FAIL])
def test_record_round_trips_through_the_storage(storage_url, study_name, state):
    study = optuna.create_study(study_name=study_name, storage=storage_url, direction="maximize")
    trial = study.ask()
    trial.suggest_float("IN.a", 0.0, 1.0)
    record.write(trial, **FULL)
    if state == TrialState.COMPLETE:
        study.tell(trial, 0.55)  # the objective: 0.61 raw less a penalty
    else:
        study.tell(trial, state=TrialState.FAIL)
    # scores written after the trial finished (a confirm re-score)
    record.write_finished(study, trial.number, "confirm", confirm=0.6, confirm_prompts=[0.5, 0.7])

    fresh = optuna.load_study(study_name=study_name, storage=storage_url)  # a new connection, nothing cached
    (got,) = record.read_all(fresh)
    expected = {**FULL, "confirm": 0.6, "confirm_prompts": (0.5, 0.7)}
    if state == TrialState.COMPLETE:  # recovery marks mean nothing on a trial its driver completed
        expected.update(requeued=False, fail_reason=None)
    for field, value in expected.items():
        assert getattr(got, field) == value, field
    assert got.number == 0 and got.state == state.name and got.missing == () and got.invalid == ()
    assert got.trial_id == fresh.trials[0]._trial_id and got.params["IN.a"] == fresh.trials[0].params["IN.a"]
    if state == TrialState.COMPLETE:
        assert got.objective == 0.55 and got.search == 0.61 and got.penalised
        assert got.score("confirm") == 0.6 and got.se("holdout") == 0.03 and got.prompts("search") == (0.5, 0.75, 0.58)
    else:
        assert got.objective is None and got.failed_for_good is False  # requeued: not counted


def test_writer_refuses_unknown_fields_wrong_types_and_non_finite_scores():
    with pytest.raises(TypeError, match="no stored field 'tag_recall_raw'"):
        record.attrs(tag_recall_raw=0.5)
    with pytest.raises(ValueError, match="holdout_categories"):
        record.attrs(holdout_categories=[0.5])
    with pytest.raises(ValueError, match="not a finite number"):
        record.attrs(confirm_prompts=[0.5, float("nan")])
    assert record.attrs(holdout=None, baseline="uniform") == {"baseline": "uniform"}


def test_standard_error_is_the_sample_std_over_sqrt_n():
    values = [0.2, 0.4, 0.9, 0.5]
    mean = sum(values) / 4
    by_hand = math.sqrt(sum((v - mean) ** 2 for v in values) / 3) / 2
    assert record.standard_error(values) == pytest.approx(by_hand)
    assert record.standard_error([0.3]) is None


D = {"IN.a": FloatDistribution(0, 1)}


def _trial(number, state, value=None, **attrs):
    t = create_trial(state=state, value=value, params={"IN.a": 0.5}, distributions=D, user_attrs=attrs)
    t.number = number
    t.datetime_start = datetime(2026, 1, 1)
    return t


def test_reader_names_what_is_missing_or_unreadable_and_never_raises():
    trials = [
        _trial(0, TrialState.COMPLETE, 0.5),  # nothing stored at all
        _trial(1, TrialState.COMPLETE, 0.4, categories="oops", holdout="high", recipe=3, baseline="uniform"),
        _trial(2, TrialState.FAIL),
        _trial(3, TrialState.COMPLETE, 0.3, tag_recall_raw=0.35, negative_mass=0.1),  # older spelling
        _trial(4, TrialState.FAIL, error="NaN in the decoded images"),  # older spelling of fail_reason
    ]
    got = [record.read(t) for t in trials]
    assert got[0].missing == ("recipe", "search_categories") and got[0].search == 0.5  # unpenalised: raw == value
    assert set(got[1].invalid) == {"categories", "holdout", "recipe"} and got[1].holdout is None
    assert got[2].missing == ("fail_reason",)
    assert got[3].search == 0.35 and got[3].objective == 0.3 and got[3].penalised
    assert got[4].fail_reason == "NaN in the decoded images" and got[4].failed_for_good
    gaps = record.gaps(got)
    assert "3 trial(s) have no 'recipe' (#0, #1, #3)" in gaps
    assert "1 trial(s) have an unreadable 'holdout' (#1); ignored" in gaps
    assert any("baseline(s) have no holdout score (#1)" in line for line in gaps)


def test_closing_table_when_baselines_have_no_holdout_score():
    """Ctrl-C during the baselines' holdout checks, then a searched trial beats every parent: the table
    used to raise StopIteration; it must print, say what is missing, and compare nothing it cannot."""
    trials = [
        _trial(0, TrialState.COMPLETE, 0.5, baseline="parent:base", categories={"shape": 0.5},
               holdout_error="search stopped before the holdout check"),
        _trial(1, TrialState.COMPLETE, 0.45, baseline="uniform", categories={"shape": 0.4}),
        _trial(2, TrialState.COMPLETE, 0.7, holdout=0.66, categories={"shape": 0.7}),
    ]
    records = [record.read(t) for t in trials]
    text = format_table(result_rows(records), record.gaps(records))
    assert "no baseline has a holdout score yet" in text
    assert "2 baseline(s) have no holdout score (#0, #1)" in text
    # one baseline scored: compared with that one only, and said so
    trials[1] = _trial(1, TrialState.COMPLETE, 0.45, baseline="uniform", holdout=0.6, categories={"shape": 0.4})
    text = format_table(result_rows(trials))
    assert "best trial 2 beats the 1 baselines with a holdout score (0.660 vs uniform 0.600, +0.060)" in text
