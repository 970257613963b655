"""Bad input and unwritable targets: one clear line naming the file or option, the right exit code,
and nothing half-written."""

import os
from pathlib import Path

import pytest
import yaml
from search_helpers import search_config

from search.cli import main
from search.config import parse_config
from search.runner import prepare, run_search
from search.workers import EvaluatorSpec

ROOT_USER = os.geteuid() == 0  # root writes through read-only modes: use a path nobody may write instead
UNWRITABLE = Path("/sys/mergesearch-test")  # sysfs refuses new entries, even to root


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", ["yaml list", "yaml scalar", "binary", "nul bytes"])
def test_a_config_that_is_not_a_mapping_of_settings(case, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    if case == "yaml list":
        path.write_text("- name: t\n- models: []\n")
    elif case == "yaml scalar":
        path.write_text("just some words\n")
    elif case == "binary":
        path.write_bytes(bytes(range(128, 256)) * 4)  # not UTF-8
    else:
        path.write_bytes(b"name: t\x00\x01\x02")
    assert main(["search", str(path), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line
    if case.startswith("yaml"):
        assert "not a mapping of settings" in line
    else:
        assert "not a text file" in line


def test_a_bad_command_line_value_is_blamed_on_its_option(tmp_path, tiny_models, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(search_config(tmp_path, tiny_models)))
    assert main(["search", str(path), "--trials", "-5", "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("mergesearch search: --trials -5: Input should be greater than or equal to 1"), line
    assert "overrides budget.trials" in line
    # the same value written in the file is blamed on the file and its key
    path.write_text(yaml.safe_dump(search_config(tmp_path, tiny_models, budget={"trials": -5})))
    assert main(["search", str(path), "--quiet"]) == 2
    assert f"{path}: budget.trials: Input should be greater" in _one_line(capsys.readouterr().err)


@pytest.fixture
def finished_run(tmp_path, tiny_models) -> Path:
    cfg = parse_config(search_config(tmp_path, tiny_models, budget={"trials": 6}, pruner={"enabled": False}))
    run_search(prepare(cfg, evaluator=EvaluatorSpec(factory="search_fakes:FakeEvaluator")))
    return tmp_path / "runs" / "t"


def _unwritable(tmp_path: Path) -> Path:
    if ROOT_USER:
        return UNWRITABLE / "report"
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "report"


def test_report_into_an_unwritable_folder(finished_run, tmp_path, capsys):
    out = _unwritable(tmp_path)
    assert main(["report", str(finished_run), "--out", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("mergesearch report: cannot write") and "--out" in line
    assert not out.exists()


def test_report_when_the_run_folder_takes_no_report(finished_run, tmp_path, capsys):
    # the default target RUN/report cannot be made (a file is in the way; on a read-only disk, the same)
    (finished_run / "report").write_text("not a folder")
    assert main(["report", str(finished_run)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "cannot write" in line and "--out DIR" in line
    assert (finished_run / "report").read_text() == "not a folder"
    assert not [p for p in finished_run.rglob(".*tmp*")]  # no temporary file left behind


def test_prompts_into_an_unwritable_folder(tmp_path, capsys):
    out = _unwritable(tmp_path).with_name("set.json")
    assert main(["prompts", "toyworld", "--n", "4", "--tags", "2", "-o", str(out)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"mergesearch prompts: -o {out}: cannot write")
    assert not out.exists()


def test_a_fork_keeps_both_studies_reachable(tmp_path, tiny_models, capsys, monkeypatch):
    import search.runner

    monkeypatch.setattr(search.runner, "default_evaluator",
                        lambda *a, **k: EvaluatorSpec(factory="search_fakes:FakeEvaluator"))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(search_config(tmp_path, tiny_models, budget={"trials": 5})))
    assert main(["search", str(path), "--quiet"]) == 0
    other = search_config(tmp_path, tiny_models, budget={"trials": 6}, space={"default_bounds": [-0.5, 1.5]})
    path.write_text(yaml.safe_dump(other))
    assert main(["search", str(path), "--quiet"]) == 2  # another space: refused, with the way out
    assert "--fork" in capsys.readouterr().err
    assert main(["search", str(path), "--quiet", "--fork"]) == 0
    fork = f"t.{parse_config(other).config_hash[:8]}"
    assert "also holds t: pass --study NAME" in capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    assert main(["status", str(run)]) == 0  # the latest study by default ...
    out = capsys.readouterr().out
    assert f"study {fork} " in out and "done 6/6" in out and "other studies in this run: t " in out
    assert main(["status", str(run), "--study", "t"]) == 0  # ... and the original on request
    assert "study t " in (out := capsys.readouterr().out) and "done 5/5" in out
    assert main(["report", str(run), "--study", "t", "--out", str(tmp_path / "rep")]) == 0
    assert "study t: 5 trials" in capsys.readouterr().out
    assert main(["status", str(run), "--study", "nope"]) == 2
    assert f"its studies are t, {fork}" in _one_line(capsys.readouterr().err)
