"""merge, repair and lora append to the history; `mergesearch history` finds them and replays a recipe."""

import json

import pytest

from benchmark.toyworld import random_checkpoint
from search.cli import main


@pytest.fixture
def hist(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESEARCH_HISTORY", str(tmp_path / "history.sqlite"))


def test_commands_append_and_history_finds_them(hist, tmp_path, capsys):
    a = random_checkpoint(tmp_path / "alpha.safetensors", seed=0)
    b = random_checkpoint(tmp_path / "beta.safetensors", seed=1)
    assert main(["merge", str(a), str(b), "--alpha", "0.3", "-q", "-o", str(tmp_path / "m.safetensors")]) == 0
    assert main(["repair", str(a), str(b), "--rank", "1", "-q", "-o", str(tmp_path / "r.safetensors")]) == 0
    assert main(["lora", "extract", str(a), str(b), "--rank", "2", "-q", "-o", str(tmp_path / "l.safetensors")]) == 0
    capsys.readouterr()
    assert main(["history", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["command"] for r in rows] == ["lora extract", "repair", "merge"]
    assert all([s["name"] for s in r["sources"]] == ["alpha", "beta"] for r in rows)
    assert all(len(s["sha256"]) == 64 for r in rows for s in r["sources"])
    assert rows[2]["method"] == "weighted-sum" and rows[2]["recipe"]["weights"]["IN00"] == [0.3]
    assert main(["history", "repair", "OR", "lora"]) == 0
    out = capsys.readouterr().out
    assert "repair" in out and "lora extract" in out and " merge " not in out
    # the recipe of an entry replays the merge
    assert main(["history", "--show", str(rows[2]["id"]), "--recipe"]) == 0
    (tmp_path / "again.json").write_text(capsys.readouterr().out)
    assert main(["merge", "--recipe", str(tmp_path / "again.json"), "-q", "-o", str(tmp_path / "again.safetensors")]) == 0
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    assert main(["history", "--show", "99"]) == 1
    assert "no merge history entry 99" in capsys.readouterr().err
