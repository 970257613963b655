"""Tagger registry and backends, on tiny random stand-ins (no downloads)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import TAGGERS, BenchmarkError, Vocabulary, get_tagger
from benchmark.taggers import decide

V = Vocabulary.build("t", {"hair colour": ["red hair", "blonde hair", "black hair"], "subject": ["1girl", "1boy"]})
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    (d / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "tiny-test-clip.json")
    torch.manual_seed(0)
    return get_tagger("clip", model="tiny-test-clip", pretrained=None)


def test_registry_names_and_unknown_tagger():
    assert {"clip", "wd", "toyworld"} <= set(TAGGERS)
    with pytest.raises(BenchmarkError, match=r"unknown tagger 'deepdanbooru'; choose one of \['clip', 'toyworld', 'wd'\]"):
        get_tagger("deepdanbooru")


def test_clip_tagger_softmax_per_category_and_top1(tiny_clip):
    probs = tiny_clip.tag(images(3), V)
    assert probs.shape == (3, 5)
    for sl in V.category_slices.values():
        assert np.allclose(probs[:, sl].sum(axis=1), 1.0)
    found = decide(tiny_clip, probs, V)
    for sl in V.category_slices.values():  # exactly one tag per category: the top-1
        assert (found[:, sl].sum(axis=1) == 1).all()
        assert (probs[:, sl].argmax(axis=1) == found[:, sl].argmax(axis=1)).all()
    assert np.array_equal(probs, tiny_clip.tag(images(3), V))  # deterministic
    tiny_clip.min_prob = 1.01
    assert not decide(tiny_clip, probs, V).any()  # a threshold above any probability finds nothing
    tiny_clip.min_prob = 0.0


def test_clip_tagger_bad_model():
    with pytest.raises(BenchmarkError, match="cannot build open_clip model 'no-such-model'"):
        get_tagger("clip", model="no-such-model", pretrained=None)


@pytest.fixture(scope="module")
def tiny_wd(tmp_path_factory):
    """A WD-v3-shaped timm folder (config.json, model.safetensors, selected_tags.csv) with random weights."""
    import timm
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("wd")
    tags = [("red_hair", 0), ("blonde_hair", 0), ("black_hair", 0), ("1girl", 0), ("1boy", 0), ("hatsune_miku", 4)]
    args = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=len(tags), **args)
    save_file(model.state_dict(), str(d / "model.safetensors"))
    cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
           "crop_pct": 1.0, "num_classes": len(tags)}
    (d / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": len(tags),
                                               "model_args": args, "pretrained_cfg": cfg}))
    with open(d / "selected_tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag_id", "name", "category", "count"])
        w.writerows([i, n, c, 100] for i, (n, c) in enumerate(tags))
    return d, model


def test_wd_tagger_local_folder(tiny_wd):
    folder, model = tiny_wd
    tagger = get_tagger("wd", model=str(folder))
    for a, b in zip(tagger.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the folder's weights, not a fresh init
    probs = tagger.tag(images(2), V)
    assert probs.shape == (2, 5) and ((0 < probs) & (probs < 1)).all()
    assert np.array_equal(probs, tagger.tag(images(2), V))
    v2 = Vocabulary.build("c", {"who": ["hatsune miku", "1girl"]})
    assert tagger.thresholds(v2).tolist() == [0.85, 0.35]
    with pytest.raises(BenchmarkError, match=r"tag 'green hair' is not in .*selected_tags.csv"):
        tagger.tag(images(1), Vocabulary.build("x", {"h": ["green hair"]}))


def test_wd_tagger_missing_csv(tiny_wd, tmp_path):
    folder, _ = tiny_wd
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(BenchmarkError, match="selected_tags.csv is missing"):
        get_tagger("wd", model=str(tmp_path))
