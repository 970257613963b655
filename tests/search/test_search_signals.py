"""Signals to a real `mergesearch search` process: SIGTERM is handled like Ctrl-C (trials in flight
re-enqueued, Ray shut down), and after kill -9 of the driver its Ray workers exit promptly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState
from search_helpers import search_config

from search import trial_record as record
from search.study import finished_count

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "search_cli_driver.py"

pytestmark = pytest.mark.slow


def start(tmp_path: Path, cfg: dict, *, batch: float = 0.3, user_env: bool = False) -> subprocess.Popen:
    """`user_env`: Ray's settings as a user has them (the test suite's RAY_AUTH_MODE removed)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FAKE_EVALUATOR": json.dumps({"batches": 2, "batch_seconds": batch})}
    if user_env:
        env.pop("RAY_AUTH_MODE", None)
    return subprocess.Popen([sys.executable, str(DRIVER), "search", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(url: str, name: str, ready, timeout: float = 180.0) -> optuna.Study:
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if ready(study):
            return study
    raise AssertionError("the search never reached the awaited state")


def _mid_trial(study) -> bool:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return states.count(TrialState.COMPLETE) >= 3 and TrialState.RUNNING in states


def test_sigterm_stops_like_ctrl_c(tmp_path, tiny_models):
    cfg = search_config(tmp_path, tiny_models, budget={"trials": 40}, pruner={"enabled": False})
    proc = start(tmp_path, cfg)
    url = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    try:
        study = wait_for(url, "t", _mid_trial)
        in_flight = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
        proc.send_signal(signal.SIGTERM)  # what `timeout 600 mergesearch search ...` sends
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "stopping (SIGTERM): trials in flight are re-enqueued" in err and "Traceback" not in err
    records = {r.number: r for r in record.read_all(optuna.load_study(study_name="t", storage=url))}
    assert not [r for r in records.values() if r.state == "RUNNING"]  # nothing left RUNNING
    for n in in_flight:
        r = records[n]
        if r.state == "FAIL":
            assert r.requeued and r.fail_reason == "interrupted"
            assert any(w.state == "WAITING" and w.retry_of == n for w in records.values())
        else:
            assert r.complete  # it finished (or only its holdout check was cut short) before the stop
    assert "study t" in out  # the closing table was printed


@pytest.mark.ray
def test_ray_workers_exit_soon_after_the_driver_is_killed(tmp_path, tiny_models):
    cfg = search_config(tmp_path, tiny_models, budget={"trials": 60}, pruner={"enabled": False},
                        workers={"backend": "ray", "count": 2, "poll_seconds": 0.2})
    proc = start(tmp_path, cfg, batch=0.5, user_env=True)
    url = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    try:
        study = wait_for(url, "t", _mid_trial, timeout=300)
        workers = {r.worker.rsplit(":", 1)[1] for r in record.read_all(study) if r.worker}
        actors = [int(p) for p in workers]
        assert len(actors) == 2 and all(psutil.pid_exists(p) for p in actors)
        os.kill(actors[1], signal.SIGKILL)  # a worker dies mid-trial: retried, and said quietly
        study = wait_for(url, "t", lambda s: any((r.fail_reason or "").startswith("crash: worker")
                                                 for r in record.read_all(s)), timeout=120)
        study = wait_for(url, "t", _mid_trial, timeout=120)
        actors = [int(r.worker.rsplit(":", 1)[1]) for r in record.read_all(study)
                  if r.worker and r.state == "COMPLETE"][-1:] + [actors[0]]
        raylet = psutil.Process(actors[0]).parent()
        # every process of the driver's private Ray cluster: the raylet, its agents and workers
        pids = [raylet.pid, *(p.pid for p in raylet.children())]
        assert len(pids) >= 4, [p.cmdline()[:1] for p in raylet.children()]
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    killed = time.time()
    # quiet: no Ray token-auth warning, no multi-line notice about the dead worker, no traceback
    assert "Token authentication" not in err and "A worker died" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3, err
    while time.time() - killed < 30 and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                           for p in pids):
        time.sleep(0.5)
    gone_after = time.time() - killed
    left = [psutil.Process(p).cmdline()[:1] for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != "zombie"]
    assert gone_after < 15, f"{left} still alive {gone_after:.0f} s after the driver was killed"
    print(f"the driver's Ray processes were gone {gone_after:.1f} s after kill -9")


@pytest.mark.parametrize("delay", [1.5, 4.0, 8.0])
def test_ctrl_c_during_the_set_up_stops_cleanly(tmp_path, tiny_models, delay):
    """Ctrl-C while the driver loads, checks the config or opens the study: exit 130 at the next safe
    point (a KeyboardInterrupt raised inside a library can be swallowed there and the search run on)."""
    cfg = search_config(tmp_path, tiny_models, budget={"trials": 40}, pruner={"enabled": False})
    proc = start(tmp_path, cfg)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    db = tmp_path / "runs" / "t" / "study.db"
    names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] if db.exists() else []
    if "t" in names:  # stopped after the study was opened (else: before it was made, nothing to check)
        study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
        assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
        assert finished_count(study) < 40
