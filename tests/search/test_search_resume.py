"""What an interrupted or penalised search leaves behind, read back honestly: an interrupted holdout
check is redone on resume; the live line never shows a best before a trial completes; the penalised
objective and the raw tag recall are two named quantities in status, report and export."""

import json

import pytest
from search_fakes import score_of
from search_helpers import search_config

from merge_core import Recipe, open_checkpoint
from search import trial_record as record
from search.cli import main
from search.config import parse_config
from search.runner import prepare, run_search
from search.workers import EvaluatorSpec


def fake():
    return EvaluatorSpec(factory="search_fakes:FakeEvaluator")


def test_an_interrupted_holdout_check_is_redone_on_resume(tmp_path, tiny_models, capsys):
    # the first run scores the baselines without their holdout check (as a Ctrl-C during it leaves them)
    first = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 4}, holdout=False))
    run_search(prepare(first, evaluator=fake()))
    assert main(["status", str(tmp_path / "runs" / "t")]) == 0  # reads, and says what is missing
    out = capsys.readouterr().out
    assert "4 baseline(s) have no holdout score (#0, #1, #2, #3); the next `mergesearch search` scores them" in out
    second = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 8}))
    assert second.config_hash == first.config_hash  # the holdout switch is not part of the study's identity
    result = run_search(prepare(second, evaluator=fake()))
    records = record.read_all(result.study)
    for r in records[:4]:
        assert r.baseline and r.holdout == pytest.approx(score_of(Recipe.model_validate_json(r.recipe), "holdout"))
    assert record.gaps(records) == []
    assert main(["status", str(tmp_path / "runs" / "t")]) == 0
    assert "have no holdout score" not in capsys.readouterr().out


def test_the_live_line_shows_a_best_only_once_a_trial_is_complete(tmp_path, tiny_models):
    seen = []
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 6}))
    run_search(prepare(cfg, evaluator=fake()), on_update=lambda s: seen.append((s.complete, s.best_value)))
    assert seen and all(best is None for complete, best in seen if complete == 0)
    assert seen[-1][1] is not None


def test_objective_and_raw_recall_are_named_apart(tmp_path, tiny_models, capsys, monkeypatch):
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 10}, pruner={"enabled": False},
                                     space={"default_bounds": [-0.6, 1.2]},
                                     objective={"vocabulary": "toyworld", "n": 4, "m": 2, "negative_penalty": 0.5}))
    result = run_search(prepare(cfg, evaluator=fake()))
    study = result.study
    assert study.metric_names == ["objective"]  # what Optuna (and its dashboard) shows as the value
    records = record.completed(record.read_all(study))
    penalised = [r for r in records if r.negative_mass]
    assert penalised, "the sampler proposed negative weights"
    for r in records:  # objective = raw recall - 0.5 x negative mass, the raw recall is the worker's score
        raw = score_of(Recipe.model_validate_json(r.recipe))
        assert r.search == pytest.approx(raw)
        assert r.objective == pytest.approx(raw - 0.5 * (r.negative_mass or 0.0))
    run = tmp_path / "runs" / "t"
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "top 5 by objective:" in out and "objective = tag_recall less the negative-weight penalty" in out
    best = record.best(records)
    assert f"objective {best.objective:.4f}  tag_recall {best.search:.4f}" in out

    titles = []
    from search.review import plots

    real = plots.weights_plot
    monkeypatch.setattr(plots, "weights_plot", lambda w, p, *, title: titles.append(title) or real(w, p, title=title))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert f"objective {best.objective:.3f}, tag_recall {best.search:.3f}" in titles[0]

    target = penalised[0]
    out_file = tmp_path / "pen.safetensors"
    assert main(["export", str(run), "--trial", str(target.number), "-o", str(out_file), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"tag_recall {target.search:.4f} on the search split, objective {target.objective:.4f}" in printed
    meta = open_checkpoint(out_file).metadata
    assert meta["mergesearch.tag_recall"] == f"{target.search:.6f}"
    assert meta["mergesearch.objective"] == f"{target.objective:.6f}"
    assert f"tag_recall {target.search:.4f}" in meta["modelspec.description"]
    assert f"objective {target.objective:.4f} (after the negative-weight penalty)" in meta["modelspec.description"]
    scores = json.loads(meta["mergesearch.provenance"])["scores"]
    assert scores["search"] == pytest.approx(target.search) and scores["objective"] == pytest.approx(target.objective)
