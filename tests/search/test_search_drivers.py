"""Several drivers on one study, as real processes: SQLite and the real PostgreSQL server.

Two drivers started at the same moment run one study to its budget together; a driver killed with
SIGKILL while another runs has its trials recovered by the other once its heartbeat is older than the
grace period (played as a driver on another host, so only the heartbeat can tell it is gone)."""

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from search_helpers import search_config

from search import trial_record as record
from search.storage import _lost_schema_race
from search.study import finished_count

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

DRIVER = """
import sys
sys.path[:0] = {paths!r}
from search.config import load_config
from search.runner import prepare, run_search
from search.workers import EvaluatorSpec
result = run_search(prepare(load_config({cfg!r}), evaluator=EvaluatorSpec(
    factory="search_fakes:FakeEvaluator", kwargs={{"batches": 2, "batch_seconds": {batch}}})))
s = result.stats
print("STATS", s.complete, s.pruned, s.failed, s.retried, s.recovered, s.taken_over, flush=True)
"""

pytestmark = pytest.mark.slow


def _driver(tmp_path: Path, cfg: dict, tag: str, *, batch: float = 0.15, host: str | None = None):
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = DRIVER.format(paths=[str(ROOT), str(HERE)], cfg=str(path), batch=batch)
    env = None
    if host:
        import os

        env = {**os.environ, "MERGESEARCH_HOST": host}
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _check_consistent(study: optuna.Study, budget: int) -> list[record.TrialRecord]:
    records = record.read_all(study)
    assert not [r.number for r in records if r.state in ("RUNNING", "WAITING")]  # none left behind
    assert finished_count(study) == budget  # exactly the budget, counted over every driver's trials
    counted = [r for r in records if not (r.state == "FAIL" and r.requeued)]
    assert len(counted) == budget
    firsts = Counter(r.baseline for r in records if r.baseline and r.retry_of is None)
    assert firsts == {"parent:base": 1, "parent:a": 1, "parent:b": 1, "uniform": 1}  # enqueued once
    done = Counter(r.baseline for r in records if r.baseline and r.complete)
    assert done == firsts  # and each completed once
    for r in records:  # every requeued trial was repeated exactly once, at the same params
        if r.state == "FAIL" and r.requeued:
            (retry,) = [x for x in records if x.retry_of == r.number]
            assert retry.params == r.params
    return records


def test_two_drivers_started_together_share_one_study(tmp_path, tiny_models, storage_url, study_name):
    budget = 12
    url = storage_url if storage_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'runs' / 'shared.db'}"
    cfg = search_config(tmp_path, tiny_models, name=study_name, storage=url, budget={"trials": budget},
                        pruner={"enabled": False}, workers={"heartbeat_seconds": 0.5, "grace_seconds": 5})
    procs = [_driver(tmp_path, cfg, f"d{i}") for i in range(2)]  # the same moment, a fresh storage
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    study = optuna.load_study(study_name=study_name, storage=url)
    records = _check_consistent(study, budget)
    drivers = Counter(r.driver for r in records if r.complete)
    assert len(drivers) == 2, drivers  # both drivers ran trials of the one study
    stats = [list(map(int, out.split("STATS")[1].split())) for out, _ in outs]
    assert sum(s[0] for s in stats) == sum(1 for r in records if r.complete)  # each told only its own
    assert all(s[5] == 0 for s in stats)  # no driver lost a trial to the other
    assert study.user_attrs["config_hash"]  # the attrs were set once, by the creator, before any trial


def test_a_killed_driver_is_recovered_by_the_other_after_the_grace_period(tmp_path, tiny_models, storage_url, study_name):
    budget, grace = 14, 4.0
    url = storage_url if storage_url.startswith("postgresql") else f"sqlite:///{tmp_path / 'runs' / 'shared.db'}"
    cfg = search_config(tmp_path, tiny_models, name=study_name, storage=url, budget={"trials": budget},
                        pruner={"enabled": False}, workers={"heartbeat_seconds": 0.5, "grace_seconds": grace})
    survivor = _driver(tmp_path, cfg, "a", batch=0.3)
    victim = _driver(tmp_path, cfg, "b", batch=1.0, host="other-host")  # its pid cannot be checked from here
    deadline = time.time() + 400  # two Python processes importing torch on a loaded 2-core machine
    try:
        while time.time() < deadline:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name=study_name, storage=url)
            except Exception:  # noqa: BLE001 - not created yet (no file, no tables, no study)
                continue
            mine = [r for r in record.read_all(study) if r.state == "RUNNING" and (r.driver or "").startswith("other-host")]
            done = [r for r in record.read_all(study) if r.complete]
            if mine and len(done) >= 2:
                break
    finally:
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=30)
    stranded = [r.number for r in record.read_all(study) if r.state == "RUNNING" and (r.driver or "").startswith("other-host")]
    assert stranded, "the victim was killed with a trial in flight"
    out, err = survivor.communicate(timeout=240)
    assert survivor.returncode == 0 and "Traceback" not in err, err[-3000:]
    study = optuna.load_study(study_name=study_name, storage=url)
    records = _check_consistent(study, budget)
    by_number = {r.number: r for r in records}
    for n in stranded:
        r = by_number[n]
        assert r.state == "FAIL" and r.fail_reason.startswith("driver: left RUNNING")
        # not before the victim's last heartbeat was older than the grace period
        failed_at = r.datetime_complete.timestamp()
        assert failed_at - killed_at >= grace - 1.0, (failed_at - killed_at, grace)
        if not r.params:  # killed between ask and its params: nothing to repeat (study.fail_running)
            assert not r.requeued and not [x for x in records if x.retry_of == n]
            continue
        assert r.requeued
        (retry,) = [x for x in records if x.retry_of == n]
        assert retry.complete and retry.driver != r.driver
    assert int(out.split("STATS")[1].split()[4]) == len(stranded)  # the survivor recovered them


def test_sqlite_schema_race_wording_is_recognised():
    import sqlalchemy

    exc = sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {},
                                        Exception("UNIQUE constraint failed: alembic_version.version_num"))
    assert _lost_schema_race(exc)
    assert not _lost_schema_race(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error")))
