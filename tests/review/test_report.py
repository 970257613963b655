"""The report: trial table (CSV + Parquet), plots and summary from a real SQLite study."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image
from review_builder import standin_score

from search.cli import main
from search.review import load_run, pick_trial, trial_recipe
from search.review.report import write_report


@pytest.fixture(scope="module")
def report(standin_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    files, summary = write_report(load_run(standin_run), out)
    return files, summary


def test_table_has_scores_params_and_derived_block_weights(standin_run, report):
    files, _ = report
    study = load_run(standin_run).open_study()
    table = pd.read_parquet(files.table_parquet)
    assert list(table.index) == [t.number for t in study.trials]
    assert table.loc[8, "state"] == "FAIL" and pd.isna(table.loc[8, "tag_recall"])
    best = pick_trial(study, "best")
    assert best.number == max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value).number
    row = table.loc[best.number]
    expected = standin_score(trial_recipe(best))  # the stand-in scores, recomputed from the recipe
    assert row["tag_recall"] == pytest.approx(expected["value"]) == pytest.approx(row["objective"])
    assert row["holdout"] == pytest.approx(expected["holdout"])
    for cat, value in expected["categories"].items():
        assert row[f"search:{cat}"] == pytest.approx(value)
        assert row[f"holdout:{cat}"] == pytest.approx(expected["holdout_categories"][cat])
    stored = study.trials[best.number].params
    assert stored and all(row[f"param:{k}"] == pytest.approx(v) for k, v in stored.items())
    coefficients = trial_recipe(best).coefficients()
    for i, model in enumerate(("base", "a", "b")):
        assert row[f"weight:{model}:IN05"] == pytest.approx(coefficients["IN05"][i])
    # every model's coefficients of one block sum to 1 under the affine form
    assert sum(row[f"weight:{m}:OUT03"] for m in ("base", "a", "b")) == pytest.approx(1.0)
    assert row["duration_s"] > 0 and table.loc[0, "baseline"] == "parent:base"
    csv = pd.read_csv(files.table_csv, index_col="number")
    assert csv.shape == table.shape


def test_plots_are_real_pngs(report):
    files, _ = report
    for path in (files.history_png, files.weights_png, files.categories_png):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # not a blank canvas: the plot draws in several colours
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20


def test_summary_compares_best_with_every_parent(standin_run, report):
    _, summary = report
    study = load_run(standin_run).open_study()
    assert "9 trials (8 complete, 1 fail)" in summary
    for label in ("parent:base", "parent:a", "parent:b"):
        assert label in summary
    best = pick_trial(study, "best")
    assert f"best (#{best.number}" in summary and f"{best.search:.4f}" in summary


def test_cli_prints_summary_and_files(standin_run, tmp_path, capsys):
    assert main(["report", str(standin_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs best parent" in out and str(tmp_path / "history.png") in out
    assert (tmp_path / "trials.parquet").is_file()


def test_block_weights_of_a_non_linear_recipe_show_model_weights_and_method_parameters(tmp_path):
    """A TIES or SLERP best has no linear coefficients: the table and the figure show what the recipe sets."""
    from merge_core import Recipe, Source, layout_for
    from search.review import plots
    from search.review.trials import block_weights

    ids = layout_for("sd1").weight_ids
    sources = tuple(Source(path=f"/m/{n}.safetensors", name=n) for n in ("base", "a", "b"))
    vec = {wid: (0.25 * (i % 4), 1.0, 0.1 + 0.01 * i, 1.5) for i, wid in enumerate(ids)}
    ties = block_weights(Recipe(family="sd1", method="ties", sources=sources, weights=vec))
    assert list(ties.index) == ["a", "b", "density", "lambda"] and list(ties.columns) == list(ids)
    for i, wid in enumerate(ids):  # the recipe's own numbers, block by block
        assert ties[wid].tolist() == pytest.approx([0.25 * (i % 4), 1.0, 0.1 + 0.01 * i, 1.5])
    slerp = block_weights(Recipe(family="sd1", method="slerp", sources=sources[:2],
                                 weights={wid: (0.3,) for wid in ids}))
    assert list(slerp.index) == ["alpha"] and slerp.loc["alpha"].tolist() == pytest.approx([0.3] * len(ids))
    png = plots.weights_plot(ties, tmp_path / "w.png", title="ties")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.height > 200


def test_a_parent_that_is_the_best_is_its_own_best_parent():
    """When a parent is the reported best it shows as `best`; the gap to the best parent is then 0,
    not its lead over the other parents."""
    import optuna

    from search import trial_record as record
    from search.review.report import summary

    study = optuna.create_study(direction="maximize")
    for label, score, hold in (("parent:base", 0.40, 0.38), ("parent:a", 0.60, 0.55), ("uniform", 0.50, 0.47)):
        t = study.ask()
        record.write(t, baseline=label, recipe="{}", search=score, holdout=hold)
        study.tell(t, score)
    text = summary(study)
    best_row = next(line for line in text.splitlines() if line.startswith("best (#1, parent:a)"))
    assert best_row.split()[-2:] == ["+0.0000", "+0.0000"]  # vs best parent (search), holdout vs best
    uniform_row = next(line for line in text.splitlines() if line.startswith("uniform (#2)"))
    assert uniform_row.split()[-2:] == ["-0.1000", "-0.0800"]  # 0.50 - 0.60, 0.47 - 0.55 by hand
