"""Faults with real processes: kill -9 of a Ray worker mid-trial, kill -9 of the driver then a rerun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from search_helpers import search_config

from search.config import parse_config
from search.runner import prepare, run_search
from search.study import finished_count
from search.workers import EvaluatorSpec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.ray
def test_kill_9_of_a_ray_worker_mid_trial(tmp_path, tiny_models, ray_cluster):
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 10}, pruner={"enabled": False},
                                     workers={"backend": "ray", "count": 2, "max_restarts": 2, "poll_seconds": 0.1}))
    spec = EvaluatorSpec(factory="search_fakes:FakeEvaluator", kwargs={"batches": 3, "batch_seconds": 0.25},
                         torch_threads=1)
    prepared = prepare(cfg, evaluator=spec)
    state = {}

    def on_loop(loop):
        state["loop"] = loop

    def on_update(stats):
        pool = state["loop"].pool
        if "killed" not in state and stats.complete >= 2 and len(pool.in_flight()) == 2:
            state["killed"] = pool.pids[0]
            state["victim"] = next(t.trial_number for ref, (i, t) in pool._busy.items() if i == 0)
            os.kill(pool.pids[0], signal.SIGKILL)

    result = run_search(prepared, on_update=on_update, on_loop=on_loop)
    study = result.study
    trials = study.get_trials()
    assert "killed" in state
    victim = trials[state["victim"]]
    assert victim.state == TrialState.FAIL and victim.user_attrs["requeued"]
    assert victim.user_attrs["fail_reason"].startswith("crash: worker 0 died")
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert result.stats.retried == 1
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert finished_count(study) == 10
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 10  # nothing lost
    assert {t.user_attrs["worker"].split("@")[0] for t in trials if "worker" in t.user_attrs} == {"ray-0", "ray-1"}


DRIVER = """
import sys
sys.path[:0] = {paths!r}
from search.config import load_config
from search.runner import prepare, run_search
from search.workers import EvaluatorSpec
cfg = load_config({cfg!r})
run_search(prepare(cfg, evaluator=EvaluatorSpec(factory="search_fakes:FakeEvaluator",
                                                kwargs={{"batches": 2, "batch_seconds": 0.15}})))
"""


def test_kill_9_of_the_driver_then_rerun(tmp_path, tiny_models):
    cfg = search_config(tmp_path, tiny_models, budget={"trials": 14}, pruner={"enabled": False})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = DRIVER.format(paths=[str(ROOT), str(HERE)], cfg=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    storage_url = f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}"
    deadline = time.time() + 400  # the driver process imports torch: slow on a loaded 2-core machine
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="t", storage=storage_url)
            except (KeyError, Exception):  # noqa: BLE001 - not created yet
                continue
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if states.count(TrialState.COMPLETE) >= 5 and TrialState.RUNNING in states:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = optuna.load_study(study_name="t", storage=storage_url).get_trials()
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    assert running, "the driver was killed mid-trial"
    done_before = finished_count(optuna.load_study(study_name="t", storage=storage_url))
    assert 5 <= done_before < 14

    result = run_search(prepare(parse_config(cfg), evaluator=EvaluatorSpec(factory="search_fakes:FakeEvaluator")))
    trials = result.study.get_trials()
    assert result.opened.recovered == running
    assert result.opened.enqueued_baselines == []
    assert [t.number for t in trials[: len(before)]] == [t.number for t in before]  # the count continues
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = [t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs and t.state == TrialState.COMPLETE]
    assert sorted(done) == ["parent:a", "parent:b", "parent:base", "uniform"]  # each baseline once
    for n in running:
        retries = [t for t in trials if t.user_attrs.get("retry_of") == n]
        if not trials[n].params:  # killed before its params were drawn: nothing to repeat
            assert not retries and not trials[n].user_attrs.get("requeued")
            continue
        (retry,) = retries
        # the retry repeats every parameter the killed trial had drawn (killed mid-suggestion, it may
        # have drawn only some; the rest are sampled afresh)
        assert retry.state == TrialState.COMPLETE
        assert {k: retry.params[k] for k in trials[n].params} == trials[n].params
    assert finished_count(result.study) == 14


@pytest.mark.ray
def test_graceful_stop_requeues_trials_in_flight(tmp_path, tiny_models, ray_cluster):
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 8}, pruner={"enabled": False},
                                     workers={"backend": "ray", "count": 2, "poll_seconds": 0.1}))
    spec = EvaluatorSpec(factory="search_fakes:FakeEvaluator", kwargs={"batches": 2, "batch_seconds": 0.2},
                         torch_threads=1)
    state = {}

    def on_update(stats):  # what Ctrl-C does in `mergesearch search`
        if stats.complete >= 2 and "stopped" not in state and len(state["loop"].pool.in_flight()) == 2:
            state["stopped"] = [t.trial_number for t in state["loop"].pool.in_flight()]
            state["loop"].request_stop("interrupted")

    result = run_search(prepare(cfg, evaluator=spec), on_update=on_update,
                        on_loop=lambda loop: state.update(loop=loop))
    assert result.stats.stopped == "interrupted"
    trials = result.study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for n in state["stopped"]:
        t = trials[n]
        if t.state == TrialState.FAIL:  # interrupted mid-render: re-enqueued for the next run
            assert t.user_attrs["requeued"] and t.user_attrs["fail_reason"] == "interrupted"
            assert any(w.state == TrialState.WAITING and w.user_attrs["retry_of"] == n for w in trials)
        else:  # scored, only its holdout check was cut short
            assert t.state == TrialState.COMPLETE and "holdout_error" in t.user_attrs
    local = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 8}, pruner={"enabled": False}))
    assert local.config_hash == cfg.config_hash  # the worker backend is not part of the study's identity
    rerun = run_search(prepare(local, evaluator=spec))
    assert finished_count(rerun.study) == 8
    assert not [t for t in rerun.study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
