"""The real product path on tiny random toy-world models: renderer, Mixer, tagger, scores, sheets."""

import io

import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState
from PIL import Image
from safetensors.torch import save_file

from benchmark.toyworld import random_checkpoint
from merge_core import load_state_dict, save_safetensors
from search.config import parse_config
from search.runner import prepare, run_search
from search.study import finished_count


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyreal")
    models = {n: random_checkpoint(root / f"{n}.safetensors", seed=i) for i, n in enumerate(("base", "a", "b"))}
    from benchmark.toyworld.tagger import create_model

    torch.manual_seed(0)
    model, _ = create_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "tagger.safetensors")
    # a source whose middle block is enormous: any candidate that takes some of it renders inf/NaN
    sd = {k: v.float() for k, v in load_state_dict(models["b"]).items()}
    for k in sd:
        if k.startswith("model.diffusion_model.middle_block.") and sd[k].is_floating_point():
            sd[k] = sd[k] * 1e30
    save_safetensors(sd, root / "broken.safetensors")
    return root, models


def toy_config(root, models, **over):
    cfg = {
        "name": "toy", "renderer": "toyworld",
        "models": [{"name": n, "path": str(p)} for n, p in models.items()],
        "space": {"groups": {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"]}},
        "objective": {"vocabulary": "toyworld", "n": 4, "m": 2, "tagger": "toyworld",
                      "tagger_options": {"weights": str(root / "tagger.safetensors")},
                      "render": {"steps": 2}, "batch_size": 2},
        "budget": {"trials": 6}, "runs_dir": str(root / "runs"), "workers": {"torch_threads": 1},
    }
    cfg.update(over)
    return parse_config(cfg)


def test_real_evaluator_scores_and_stores_contact_sheets(toy):
    root, models = toy
    result = run_search(prepare(toy_config(root, models)))
    study = result.study
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    cats = {"background", "colour", "position", "shape", "size", "count"}
    for t in trials:
        assert 0.0 <= t.value <= 1.0 and set(t.user_attrs["categories"]) <= cats
        assert t.user_attrs["render_seconds"] > 0
    assert all("holdout" in t.user_attrs for t in trials[:4])
    (meta,) = get_all_artifact_meta(trials[0], storage=study._storage)
    store = FileSystemArtifactStore(result.info.artifact_dir)
    path = root / "sheet.webp"
    download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(path))
    sheet = Image.open(io.BytesIO(path.read_bytes()))
    assert sheet.format == "WEBP" and sheet.width == 2 * 64  # 4 prompts, 64-pixel cells, 2 columns
    assert path.stat().st_size < 50_000


def test_candidate_rendering_nan_fails_and_the_loop_goes_on(toy):
    root, models = toy
    broken = {**models, "b": root / "broken.safetensors"}
    cfg = toy_config(root, broken, name="nan", budget={"trials": 6}, sampler="random", pruner={"enabled": False})
    result = run_search(prepare(cfg))
    trials = result.study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert trials[2].user_attrs["baseline"] == "parent:b" and trials[2] in failed
    for t in failed:
        assert "non-finite" in t.user_attrs["fail_reason"] or "blank" in t.user_attrs["fail_reason"]
        assert not t.user_attrs.get("requeued")
    assert trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.COMPLETE
    assert finished_count(result.study) == 6
