"""Opening run folders: good ones load, bad ones fail with one message naming the file and the fix."""

from __future__ import annotations

import json

import optuna
import pytest

from search.review.run import ReviewError, load_run


def _write_run(folder, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "study_name": "demo",
        "storage": f"sqlite:///{folder / 'study.db'}",
        "artifact_dir": "artifacts",
        "config_path": "config.yaml",
        **overrides,
    }
    (folder / "run.json").write_text(json.dumps(data))
    return folder


def test_a_moved_run_folder_finds_its_own_study_and_artifacts(tmp_path):
    folder = _write_run(tmp_path / "r", storage="sqlite:////elsewhere/study.db", artifact_dir="/elsewhere/art")
    (folder / "artifacts").mkdir()
    optuna.create_study(study_name="demo", storage=f"sqlite:///{folder / 'study.db'}")
    run = load_run(folder / "run.json")
    assert run.artifact_dir == (folder / "artifacts").resolve()
    assert run.open_study().study_name == "demo"


def test_folder_without_run_json(tmp_path):
    with pytest.raises(ReviewError, match=r"not a run folder \(no run.json\).*mergesearch search"):
        load_run(tmp_path)


def test_run_json_missing_a_key(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"study_name": "x", "artifact_dir": "a"}))
    with pytest.raises(ReviewError, match=r"run.json: unreadable run.json"):
        load_run(tmp_path)


def test_run_folder_without_a_study_database(tmp_path):
    run = load_run(_write_run(tmp_path / "r"))
    with pytest.raises(ReviewError, match=r"does not exist, so this run has no study yet"):
        run.open_study()
    assert not (tmp_path / "r" / "study.db").exists()  # nothing was created by looking


def test_storage_without_that_study(tmp_path):
    folder = _write_run(tmp_path / "r")
    optuna.create_study(study_name="other", storage=f"sqlite:///{folder / 'study.db'}")
    with pytest.raises(ReviewError, match=r"study 'demo' not found .*studies there: other"):
        load_run(folder).open_study()


def test_cli_reports_missing_study_in_one_line(tmp_path, capsys):
    from search.cli import main

    folder = _write_run(tmp_path / "r")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0] and "mergesearch search" in err[0]


def test_study_without_completed_trials(tmp_path, capsys):
    from search.cli import main

    folder = _write_run(tmp_path / "r")
    (folder / "artifacts").mkdir()
    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{folder / 'study.db'}")
    study.ask()  # one trial still RUNNING
    assert main(["report", str(folder)]) == 2
    assert "has no completed trial yet" in capsys.readouterr().err
    assert main(["export", str(folder), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "has no completed trial yet" in capsys.readouterr().err
