"""One storage contract, run against SQLite (WAL) and the real PostgreSQL server on 127.0.0.1."""

import socket
import sqlite3
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from search_helpers import search_config

from search import trial_record as record
from search.config import parse_config
from search.runner import prepare, run_search
from search.study import StudyMismatchError, finished_count
from search.workers import EvaluatorSpec


def dead_driver() -> str:
    """The driver id of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:0"


def fake():
    return EvaluatorSpec(factory="search_fakes:FakeEvaluator")


def test_resume_recovers_stale_trials_and_guards_the_config(tmp_path, tiny_models, storage_url, study_name):
    def config(**over):
        return parse_config(search_config(tmp_path, tiny_models, name=study_name, storage=storage_url, **over))

    prepared = prepare(config(budget={"trials": 6}), evaluator=fake())
    first = run_search(prepared)
    assert finished_count(first.study) == 6
    orphan = first.study.ask()  # a driver that died mid-trial leaves a RUNNING trial behind
    orphan.suggest_float("IN.a", 0.0, 1.0)
    record.write(orphan, driver=dead_driver())  # ... on this host: a rerun recovers it at once
    assert orphan.number == 6
    second = run_search(prepare(config(), evaluator=fake()))
    trials = second.study.get_trials()
    assert second.opened.recovered == [6] and second.opened.enqueued_baselines == []
    assert trials[6].state == TrialState.FAIL and trials[6].user_attrs["requeued"]
    assert trials[7].user_attrs["retry_of"] == 6 and trials[7].params["IN.a"] == trials[6].params["IN.a"]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert finished_count(second.study) == 12 and len(trials) == 13
    assert sorted(t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs) == \
        ["parent:a", "parent:b", "parent:base", "uniform"]
    # user attrs round-trip through the backend
    best = second.study.best_trial
    assert set(best.user_attrs) >= {"recipe", "categories", "render_seconds", "worker"}
    assert second.study.user_attrs["config_hash"] == config().config_hash
    # another space may not resume the same study ...
    other = config(space={"default_bounds": [-0.5, 1.5]})
    with pytest.raises(StudyMismatchError, match="--fork"):
        run_search(prepare(other, evaluator=fake()))
    # ... unless forked: a new study beside it, with its own baselines
    forked = run_search(prepare(other, evaluator=fake()), fork=True)
    assert forked.study.study_name == f"{study_name}.{other.config_hash[:8]}"
    assert len(forked.study.get_trials()) == 12
    assert forked.study.user_attrs["forked_from"] == study_name


def test_sqlite_is_in_wal_mode(tmp_path, tiny_models):
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 4}))
    run_search(prepare(cfg, evaluator=fake()))
    with sqlite3.connect(tmp_path / "runs" / "t" / "study.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_opening_a_storage_survives_a_concurrent_schema_creation(tmp_path, monkeypatch):
    """Another process creating Optuna's tables at the same moment must not kill the driver."""
    import sqlalchemy

    from search import storage as storage_module

    real = optuna.storages.RDBStorage
    calls = []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # the other process won the race: its tables now exist
            real(url, **kwargs)
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kwargs)

    url = f"sqlite:///{tmp_path / 'study.db'}"
    with monkeypatch.context() as patch:
        patch.setattr(storage_module.optuna.storages, "RDBStorage", racing)
        storage = storage_module.make_storage(url)
    assert len(calls) == 2 and isinstance(storage, real)
    optuna.create_study(study_name="raced", storage=storage)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage=url)] == ["raced"]

    def broken(url, **kwargs):
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    monkeypatch.setattr(storage_module.optuna.storages, "RDBStorage", broken)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="disk I/O error"):
        storage_module.make_storage(url)  # other database errors are not retried away
