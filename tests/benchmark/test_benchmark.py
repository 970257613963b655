"""Benchmark on the toy world (random-weight checkpoints) and the `mergesearch benchmark` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark import (
    Benchmark,
    BenchmarkError,
    Renderer,
    RenderSettings,
    get_tagger,
    load_vocabulary,
    make_prompt_set,
)
from search.cli import main

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
SETTINGS = RenderSettings(steps=2, scheduler="ddim")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import open_clip

    from benchmark.toyworld import random_checkpoint

    d = tmp_path_factory.mktemp("toy")
    (d / "bench-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "bench-test-clip.json")
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file(open_clip.create_model("bench-test-clip").state_dict(), str(d / "clip.safetensors"))
    tagger = get_tagger("clip", model="bench-test-clip", pretrained=str(d / "clip.safetensors"))
    vocab = load_vocabulary("toyworld")
    ps = make_prompt_set(vocab, 5, 3, seed=0, holdout=3)
    ps.save(d / "set.json")
    models = [random_checkpoint(d / f"m{i}.safetensors", seed=i) for i in range(2)]
    return {"dir": d, "tagger": tagger, "vocab": vocab, "set": ps, "models": models, "renderer": Renderer("toyworld")}


def test_scores_are_deterministic_and_partial_scores_grow(toy):
    r = toy["renderer"]
    r.load_checkpoint(toy["models"][0])
    bench = Benchmark(toy["set"], "search", toy["tagger"], SETTINGS, batch_size=2)
    s1, im1 = bench.evaluate(r)
    s2, im2 = bench.evaluate(r)
    assert s1 == s2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(im1, im2, strict=True))
    partial = list(bench.evaluate_batches(r))
    assert [s.n_prompts for s, _ in partial] == [2, 4, 5]
    assert [s.complete for s, _ in partial] == [False, False, True]
    assert partial[-1][0] == s1
    assert partial[0][0].prompts == s1.prompts[:2]  # a partial score is the full one's prefix
    assert s1.n_prompts == 5 and 0.0 <= s1.ci_low <= s1.overall <= s1.ci_high <= 1.0
    r.load_checkpoint(toy["models"][1])
    s3, im3 = bench.evaluate(r)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(im1, im3, strict=True))


def test_prompt_set_from_another_vocabulary_is_refused(toy):
    dan = make_prompt_set(load_vocabulary("danbooru"), 3, 2, seed=0)
    with pytest.raises(BenchmarkError, match="made from vocabulary 'danbooru-example'.*scored with 'toyworld'"):
        Benchmark(dan, "search", toy["tagger"], SETTINGS, vocabulary=toy["vocab"])


def test_benchmark_command(toy, tmp_path, capsys):
    d = toy["dir"]
    out = tmp_path / "out"
    args = ["benchmark", *map(str, toy["models"]), "--prompts", str(d / "set.json"), "--tagger", "clip",
            "--tagger-option", "model=bench-test-clip", "--tagger-option", f"pretrained={d / 'clip.safetensors'}",
            "--config", "toyworld", "--steps", "2", "--scheduler", "ddim", "--batch-size", "2", "--split", "holdout", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for cat in ("colour", "shape", "overall (95% CI)", "precision", "m0", "m1"):
        assert cat in printed
    for name in ("m0", "m1"):
        rec = json.loads((out / name / "score.json").read_text())
        assert rec["prompt_set"]["hash"] == toy["set"].hash and rec["prompt_set"]["split"] == "holdout"
        assert len(rec["model"]["sha256"]) == 64 and rec["settings"]["steps"] == 2
        assert rec["score"]["n_prompts"] == 3 and set(rec["score"]["categories"]) <= set(toy["vocab"].categories)
        assert (out / name / "contact_sheet.jpg").stat().st_size > 0
    summary = json.loads((out / "scores.json").read_text())
    assert set(summary) == {"m0", "m1"}
    # the same command again gives the same scores
    assert main([*args[:-1], str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "m0" / "score.json").read_text())
    assert again["score"] == json.loads((out / "m0" / "score.json").read_text())["score"]


@pytest.mark.parametrize("extra, message", [
    (["--tagger", "deepdanbooru"], "unknown tagger 'deepdanbooru'"),
    (["--scheduler", "lms-magic"], "unknown scheduler 'lms-magic'"),
])
def test_benchmark_command_bad_options(toy, tmp_path, capsys, extra, message):
    args = ["benchmark", str(toy["models"][0]), "--prompts", str(toy["dir"] / "set.json"), "--config", "toyworld",
            "--out", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_benchmark_command_bad_models(toy, tmp_path, capsys):
    base = ["--prompts", str(toy["dir"] / "set.json"), "--tagger", "clip", "--tagger-option", "model=bench-test-clip",
            "--tagger-option", "pretrained=", "--config", "toyworld", "--out", str(tmp_path / "o")]
    assert main(["benchmark", str(tmp_path / "nope.safetensors"), *base]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    # a checkpoint of another family/size: the SD1 test model is not a toy-world model
    from bench_tiny import random_renderer, random_single_file, save_checkpoint, tiny_config_dir

    sd1 = random_renderer(tiny_config_dir("sd1", tmp_path), seed=0)
    path = save_checkpoint(random_single_file(sd1, seed=1), tmp_path / "sd1.safetensors")
    assert main(["benchmark", str(path), *base]) == 2
    err = capsys.readouterr().err
    assert "does not fit the sd1 renderer (toyworld)" in err and "model.diffusion_model." in err
