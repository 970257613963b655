"""The study/loop machinery end to end with the in-process worker and a stand-in evaluator whose
score is a known function of the recipe (the real renderer is exercised in test_search_toyworld)."""

import pytest
from optuna.trial import TrialState
from search_fakes import score_of
from search_helpers import search_config

from merge_core import Recipe
from search.config import parse_config
from search.runner import prepare, run_search
from search.study import finished_count
from search.workers import EvaluatorSpec


def fake(**kwargs):
    return EvaluatorSpec(factory="search_fakes:FakeEvaluator", kwargs=kwargs)


def run(tmp_path, models, evaluator=None, **over):
    cfg = parse_config(search_config(tmp_path, models, **over))
    prepared = prepare(cfg, evaluator=evaluator or fake())
    return prepared, run_search(prepared)


def test_search_runs_baselines_first_and_records_everything(tmp_path, tiny_models):
    prepared, result = run(tmp_path, tiny_models, budget={"trials": 16})
    study = result.study
    trials = study.get_trials()
    assert len(trials) == 16 and finished_count(study) == 16
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    labels = [t.user_attrs.get("baseline") for t in trials[:4]]
    assert labels == ["parent:base", "parent:a", "parent:b", "uniform"]
    assert all("baseline" not in t.user_attrs for t in trials[4:])
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        recipe = Recipe.model_validate_json(t.user_attrs["recipe"])
        assert t.value == pytest.approx(score_of(recipe))  # the value told is the worker's score
        assert set(t.user_attrs["categories"]) == {"shape", "colour"}
        assert len(t.intermediate_values) == 3
        assert any(a["mimetype"] == "image/webp" for a in _artifacts(study, t))
    # baselines and every new best carry a holdout score; the best is one of them
    for t in trials[:4]:
        assert t.user_attrs["holdout"] == pytest.approx(score_of(Recipe.model_validate_json(t.user_attrs["recipe"]),
                                                                 "holdout"))
    assert "holdout" in study.best_trial.user_attrs
    assert study.best_value == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert study.user_attrs["config_hash"] == prepared.config.config_hash
    assert study.user_attrs["family"] == "sd1" and [s["name"] for s in study.user_attrs["sources"]] == ["base", "a", "b"]
    run_json = tmp_path / "runs" / "t" / "run.json"
    assert run_json.is_file() and (tmp_path / "runs" / "t" / "config.yaml").is_file()


def _artifacts(study, trial):
    from optuna.artifacts import get_all_artifact_meta

    return [m.__dict__ if hasattr(m, "__dict__") else m._asdict() for m in get_all_artifact_meta(trial, storage=study._storage)]


def test_pruning_stops_bad_candidates_and_counts_saved_time(tmp_path, tiny_models):
    _, result = run(tmp_path, tiny_models, fake(batches=4, batch_seconds=0.02), budget={"trials": 20},
                    sampler="random", pruner={"startup_trials": 4, "warmup_batches": 1})
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "random candidates below the median must be pruned"
    assert result.stats.saved_seconds > 0
    for t in pruned:
        assert 2 <= len(t.intermediate_values) < 4 and t.user_attrs["saved_seconds"] > 0


def test_nan_candidate_fails_and_loop_continues(tmp_path, tiny_models):
    _, result = run(tmp_path, tiny_models, fake(nan_above=0.5), budget={"trials": 14}, sampler="random",
                    pruner={"enabled": False})
    failed = result.study.get_trials(states=(TrialState.FAIL,))
    assert failed and all("non-finite" in t.user_attrs["fail_reason"] for t in failed)
    assert not any(t.user_attrs.get("requeued") for t in failed)  # deterministic: not retried
    assert finished_count(result.study) == 14
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 14 - len(failed)


def test_crash_fails_trial_and_retries_it_once(tmp_path, tiny_models):
    _, result = run(tmp_path, tiny_models, fake(crash_above=0.5), budget={"trials": 10}, sampler="random",
                    pruner={"enabled": False})
    trials = result.study.get_trials()
    first = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("requeued")]
    assert first, "the parent 'a' baseline crashes, so at least one trial was retried"
    for t in first:
        (retry,) = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert retry.params == t.params and retry.state == TrialState.FAIL  # still crashes: failed for good
        assert not retry.user_attrs.get("requeued")
        assert retry.user_attrs.get("baseline") == t.user_attrs.get("baseline")
    assert finished_count(result.study) == 10


def test_a_failing_proposal_fails_one_trial_only(tmp_path, tiny_models):
    from search.loop import LoopOptions, SearchLoop
    from search.runner import open_run
    from search.workers import LocalPool

    prepared = prepare(parse_config(search_config(tmp_path, tiny_models)), evaluator=fake())
    opened, info = open_run(prepared)
    calls = []

    def make_recipe(params, number, baseline):
        calls.append(1)
        if len(calls) == 6:
            raise ValueError("weight of IN00 is not a finite number")
        return prepared.recipe_json(params, number, baseline)

    stats = SearchLoop(opened.study, prepared.space, LocalPool(fake()), make_recipe=make_recipe,
                       options=LoopOptions(trials=8, prune=False), artifact_dir=info.artifact_dir).run()
    trials = opened.study.get_trials()
    assert stats.failed == 1 and trials[5].state == TrialState.FAIL
    assert "proposal: ValueError" in trials[5].user_attrs["fail_reason"]
    assert finished_count(opened.study) == 8 and stats.complete == 7
