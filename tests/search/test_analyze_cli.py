"""`mergesearch analyze` end to end on two tiny random toy-world checkpoints."""

import csv

from benchmark.toyworld import random_checkpoint
from search.cli import main


def test_analyze_writes_table_csv_and_heat_map(tmp_path, capsys):
    a = random_checkpoint(tmp_path / "a.safetensors", seed=0)
    b = random_checkpoint(tmp_path / "b.safetensors", seed=1)
    c = random_checkpoint(tmp_path / "c.safetensors", seed=2)
    out = tmp_path / "an"
    assert main(["analyze", str(a), str(b), str(c), "--base", "a", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "blocks that differ most (from the base):" in text
    rows = list(csv.DictReader(open(out / "analysis.csv")))
    metrics = {r["metric"] for r in rows}
    assert metrics == {"cosine", "rel_diff", "rel_diff_from_base", "task_cosine", "attention_cosine"}
    assert {r["block"] for r in rows if r["metric"] == "attention_cosine"} >= {"IN01", "M00", "OUT11"}
    assert (out / "analysis.png").stat().st_size > 10_000
    assert "| metric | models | IN00 |" in (out / "analysis.md").read_text()


def test_unknown_base_is_named(tmp_path, capsys):
    a = random_checkpoint(tmp_path / "a.safetensors", seed=0)
    b = random_checkpoint(tmp_path / "b.safetensors", seed=1)
    assert main(["analyze", str(a), str(b), "--base", "nope", "-o", str(tmp_path / "x")]) == 1
    assert "--base 'nope' is not one of the models (a, b)" in capsys.readouterr().err
