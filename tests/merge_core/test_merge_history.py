"""The merge history: rows appended atomically (also by concurrent writers), searched with AND/OR."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from merge_core import Recipe, Source
from merge_core.history import get, parse_query, record, search

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hist(tmp_path, monkeypatch):
    path = tmp_path / "h" / "history.sqlite"
    monkeypatch.setenv("MERGESEARCH_HISTORY", str(path))
    return path


def test_record_search_and_get(hist, tmp_path):
    a, b = tmp_path / "colorist.safetensors", tmp_path / "sizer.safetensors"
    a.write_bytes(b"abc")
    b.write_bytes(b"def")
    recipe = Recipe.uniform("sd1", "weighted-sum", (Source(path=str(a)), Source(path=str(b))), (0.3,))
    i1 = record("merge", tmp_path / "m1.safetensors", recipe=recipe)
    i2 = record("lora extract", tmp_path / "l.safetensors", sources=[a, b], details={"rank": 8})
    i3 = record("repair", tmp_path / "r.safetensors", sources=[b], details={"rank": 4})
    assert (i1, i2, i3) == (1, 2, 3)
    assert [e.id for e in search("")] == [3, 2, 1]  # newest first
    assert [e.id for e in search("colorist")] == [2, 1]
    assert [e.id for e in search("COLORIST weighted-sum")] == [1]  # AND, case-insensitive
    assert [e.id for e in search("repair OR weighted-sum")] == [3, 1]
    assert [e.id for e in search("rank=8")] == [2]
    # hashes are recorded (sha256 of the bytes) and searchable by prefix
    import hashlib

    sha = hashlib.sha256(b"def").hexdigest()
    assert get(3).sources[0].sha256 == sha and [e.id for e in search(sha[:12])] == [3, 2, 1]
    assert Recipe.model_validate(get(1).recipe) == recipe
    with pytest.raises(KeyError, match="no merge history entry 9"):
        get(9)
    assert parse_query("a b OR c AND d") == [["a", "b"], ["c", "d"]]


# loads history.py alone (stdlib + pydantic): four interpreters importing torch would take most of the test
WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("history", "merge_core/history.py")
history = importlib.util.module_from_spec(spec)
spec.loader.exec_module(history)
record = history.record
for i in range(int(sys.argv[2])):
    assert record("merge", f"/tmp/out-{sys.argv[1]}-{i}.safetensors", sources=[], details={"writer": sys.argv[1]},
                  hash_sources=False) is not None
"""


def test_concurrent_writers_lose_nothing(hist):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(w), "30"], cwd=ROOT,
                              env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    rows = search("", limit=None)
    assert len(rows) == 120 and len({e.id for e in rows}) == 120
    for w in range(4):
        assert {e.output for e in search(f"writer={w}", limit=None)} == {f"/tmp/out-{w}-{i}.safetensors" for i in range(30)}


def test_unwritable_history_warns_and_never_raises(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MERGESEARCH_HISTORY", str(blocker / "history.sqlite"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert record("merge", tmp_path / "x.safetensors") is None
    assert "not recorded" in str(caught[0].message) and "MERGESEARCH_HISTORY" in str(caught[0].message)
    monkeypatch.setenv("MERGESEARCH_HISTORY", "0")
    assert record("merge", tmp_path / "x.safetensors") is None and search("") == []
