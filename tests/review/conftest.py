"""Fixtures: a run folder with a real SQLite study shaped as the search leaves it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from review_builder import build_run, standin_score

from merge_core import Source

ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def standin_run(tmp_path_factory) -> Path:
    """A study with stand-in scores over three small source files (review code only reads the recipes)."""
    root = tmp_path_factory.mktemp("standin")
    sources = []
    for name in ("base", "a", "b"):
        path = root / "models" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"stand-in source {name}".encode())
        sources.append(Source.from_path(path, name=name))
    return build_run(root / "run", sources, standin_score)


@pytest.fixture
def run_copy(standin_run, tmp_path) -> Path:
    """A private copy (study included), for tests that write into the study."""
    copy = Path(shutil.copytree(standin_run, tmp_path / "run"))
    info = json.loads((copy / "run.json").read_text())
    info["storage"] = f"sqlite:///{copy / 'study.db'}"  # run.json names its database by absolute path
    (copy / "run.json").write_text(json.dumps(info))
    return copy


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> tuple[dict[str, Path], dict]:
    """({name: checkpoint}, tagger options): three models of the committed toy-world zoo and its tagger;
    random toy-world weights (same architecture, SD1 single-file layout) where the zoo is not built."""
    from benchmark.toyworld import zoo

    try:
        models = zoo()
        return {k: models[k] for k in list(models)[:3]}, {}
    except FileNotFoundError:
        from safetensors.torch import save_file

        from benchmark.toyworld.checkpoint_io import random_checkpoint
        from benchmark.toyworld.tagger import create_model

        tmp = tmp_path_factory.mktemp("toy-random")
        torch.manual_seed(0)
        model, _ = create_model()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "tagger.safetensors")
        models = {n: random_checkpoint(tmp / f"{n}.safetensors", seed=i) for i, n in enumerate(("base", "a", "b"))}
        return models, {"weights": str(tmp / "tagger.safetensors")}


@pytest.fixture(scope="session")
def toy_sources(toy_world) -> list[Path]:
    return list(toy_world[0].values())


@pytest.fixture
def export_run(toy_sources, tmp_path) -> Path:
    """A run whose recipes point at private copies of real checkpoints (tests may move or modify them)."""
    sources = []
    for path in toy_sources:
        copy = tmp_path / "models" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy)
        sources.append(Source.from_path(copy, name=path.stem))
    return build_run(tmp_path / "run", sources, standin_score, n_sampled=0)


@pytest.fixture(scope="session")
def export_run_shared(toy_sources, tmp_path_factory) -> Path:
    """Like export_run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("export-shared")
    sources = [Source.from_path(p, name=p.stem) for p in toy_sources]
    return build_run(root / "run", sources, standin_score, n_sampled=2)
