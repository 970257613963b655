"""Vocabularies and prompt sets: determinism, splits, hashes, bad input."""

from __future__ import annotations

import json

import pytest

from benchmark import BenchmarkError, Vocabulary, load_prompt_set, load_vocabulary, make_prompt_set
from search.cli import main


def test_shipped_vocabularies():
    dan = load_vocabulary("danbooru")
    assert len(dan.tags) >= 300 and len(dan.categories) >= 15
    assert dan.category_of["1girl"] == "subject"
    toy = load_vocabulary("toyworld")
    assert toy.tags[:2] == ("red", "yellow") and toy.hash == load_vocabulary("toyworld").hash
    sl = toy.category_slices["shape"]
    assert toy.tags[sl] == toy.categories["shape"]


def test_vocabulary_hash_follows_content():
    a = Vocabulary.build("v", {"c": ["x", "y"], "d": ["z"]})
    assert a.hash == Vocabulary.build("v", {"c": ["x", "y"], "d": ["z"]}).hash
    assert a.hash != Vocabulary.build("v", {"c": ["y", "x"], "d": ["z"]}).hash


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("name: x\ncategories: {}\n", "no categories"),
    ("name: x\ncategories:\n  hair: []\n", "category 'hair' has no tags"),
    ("name: x\ncategories:\n  a: [red]\n  b: [red]\n", "tag 'red' is listed in category 'a' and again in 'b'"),
    ("name: x\n", "missing key 'categories'"),
    ("name: x\ncategories: [a, b]\n", "must map category names"),
    ("name: [x\n", "not valid YAML"),
])
def test_bad_vocabulary_files(tmp_path, text, match):
    f = tmp_path / "v.yaml"
    f.write_text(text)
    with pytest.raises(BenchmarkError, match=match) as err:
        load_vocabulary(f)
    assert str(f) in str(err.value)


def test_prompt_set_is_deterministic_disjoint_and_valid():
    v = load_vocabulary("danbooru")
    a = make_prompt_set(v, 40, 4, seed=7, holdout=30, prefix="1girl", negative="lowres")
    b = make_prompt_set(v, 40, 4, seed=7, holdout=30, prefix="1girl", negative="lowres")
    assert a == b and a.hash == b.hash
    assert make_prompt_set(v, 40, 4, seed=8, holdout=30).hash != a.hash
    search, holdout = a.prompts("search"), a.prompts("holdout")
    assert len(search) == 40 and len(holdout) == 30
    assert not {p.tags for p in search} & {p.tags for p in holdout}
    assert len({p.seed for p in search + holdout}) == 70
    for p in search + holdout:
        cats = [v.category_of[t] for t in p.tags]
        assert len(p.tags) == 4 and len(set(cats)) == 4  # at most one tag per category
        assert cats == sorted(cats, key=list(v.categories).index)
    assert a.texts("search")[0].startswith("1girl, ")


def test_prompt_set_file_round_trip_and_tamper(tmp_path):
    v = load_vocabulary("toyworld")
    ps = make_prompt_set(v, 6, 3, seed=1)
    path = ps.save(tmp_path / "set.json")
    back = load_prompt_set(path)
    assert back == ps and back.hash == ps.hash
    data = json.loads(path.read_text())
    assert data["hash"] == ps.hash
    data["splits"]["search"][0]["seed"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match="the file was edited"):
        load_prompt_set(path)


def test_prompt_set_bad_inputs(tmp_path):
    toy, dan = load_vocabulary("toyworld"), load_vocabulary("danbooru")
    with pytest.raises(BenchmarkError, match="at most one tag per category and there are 5 categories"):
        make_prompt_set(toy, 4, 6, seed=0)
    with pytest.raises(BenchmarkError, match="too few distinct"):
        make_prompt_set(Vocabulary.build("tiny", {"a": ["x", "y"]}), 5, 1, seed=0)
    ps = make_prompt_set(toy, 4, 2, seed=0)
    with pytest.raises(BenchmarkError, match="made from vocabulary 'toyworld'.*scored with 'danbooru-example'"):
        ps.check_vocabulary(dan)
    with pytest.raises(BenchmarkError, match="tag 'purple' is not in vocabulary 'toyworld'"):
        toy.check_tags(("red", "purple"))
    with pytest.raises(BenchmarkError, match="no split 'train'"):
        ps.prompts("train")
    with pytest.raises(BenchmarkError, match="no such prompt-set file"):
        load_prompt_set(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"vocabulary": {"name": "x"}}')
    with pytest.raises(BenchmarkError, match=r"key 'vocabulary.hash'"):
        load_prompt_set(tmp_path / "bad.json")


def test_prompts_command(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["prompts", "toyworld", "--n", "5", "--tags", "3", "--seed", "2", "-o", str(out)]) == 0
    ps = load_prompt_set(out)
    assert ps.hash in capsys.readouterr().out
    assert ps == make_prompt_set(load_vocabulary("toyworld"), 5, 3, seed=2)
    assert main(["prompts", "toyworld", "--n", "5", "--tags", "9", "-o", str(tmp_path / "x.json")]) == 2
    assert "at most one tag per category" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_confirm_split_is_disjoint_and_leaves_the_other_splits_alone(tmp_path):
    vocab = load_vocabulary("toyworld")
    plain = make_prompt_set(vocab, 16, 3, seed=4)
    with_confirm = make_prompt_set(vocab, 16, 3, seed=4, confirm=12)
    assert with_confirm.splits["search"] == plain.splits["search"]
    assert with_confirm.splits["holdout"] == plain.splits["holdout"]
    confirm = with_confirm.splits["confirm"]
    assert len(confirm) == 12
    others = {p.tags for s in ("search", "holdout") for p in with_confirm.splits[s]}
    assert not others & {p.tags for p in confirm}
    assert not {p.seed for s in ("search", "holdout") for p in with_confirm.splits[s]} & {p.seed for p in confirm}
    # a hand-made file whose confirm split repeats a search prompt is refused by name
    data = json.loads(with_confirm.model_dump_json())
    data["splits"]["confirm"][0] = data["splits"]["search"][0]
    path = tmp_path / "overlap.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match="is in both splits 'search' and 'confirm'"):
        load_prompt_set(path)
