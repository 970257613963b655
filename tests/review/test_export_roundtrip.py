"""Export round trip on the toy world: scores come from the search's own worker code (Mixer in the live
pipeline); the exported file, reloaded from disk, must score the same; inspect shows the provenance; the
fp16 file loads through diffusers' ordinary single-file loader and renders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from merge_core import Source, open_checkpoint
from search.cli import main
from search.review import load_run, pick_trial

pytestmark = pytest.mark.slow
TOY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "families" / "toyworld"


@pytest.fixture(scope="module")
def scored_run(toy_world, tmp_path_factory) -> Path:
    """A run whose trials were scored by search.evaluator.BenchmarkEvaluator, as the search's workers do."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from search import trial_record as record
    from search.config import parse_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import build_prompt_set, default_evaluator
    from search.space import SearchSpace
    from search.tasks import EvalTask

    tmp = tmp_path_factory.mktemp("scored")
    models, tagger_options = toy_world
    config = parse_config({
        "name": "roundtrip", "models": [{"name": n, "path": str(p)} for n, p in models.items()],
        "family": "sd1", "renderer": "toyworld",
        "space": {"groups": {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"]},
                  "default_bounds": [-0.3, 1.2], "components": {"TE": "search", "VAE": "search"}},
        "objective": {"vocabulary": "toyworld", "n": 4, "m": 3, "seed": 0, "tagger": "toyworld",
                      "tagger_options": tagger_options, "render": {"scheduler": "ddim", "steps": 3, "cfg": 4.0},
                      "batch_size": 4},
        "budget": {"trials": 2}, "workers": {"backend": "local", "torch_threads": 2},
    })
    sources = [Source.from_path(p, name=n) for n, p in models.items()]
    prompt_set = build_prompt_set(config)
    evaluator = BenchmarkEvaluator(**default_evaluator(config, "sd1", sources, prompt_set).kwargs)
    space = SearchSpace.build(config.space, tuple(models), tuple(f"IN{i:02d}" for i in range(12)) + ("M00",)
                              + tuple(f"OUT{i:02d}" for i in range(12)), ("TE", "VAE"))

    run = tmp / "run"
    (run / "artifacts").mkdir(parents=True)
    storage = f"sqlite:///{run / 'study.db'}"
    (run / "run.json").write_text(json.dumps({"study_name": "roundtrip", "storage": storage,
                                              "artifact_dir": str(run / "artifacts"),
                                              "config_path": str(run / "config.yaml")}))
    study = optuna.create_study(study_name="roundtrip", storage=storage, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["tag_recall"])
    for key, value in {"config": json.loads(config.model_dump_json()), "config_hash": config.config_hash,
                       "family": "sd1", "sources": [s.model_dump() for s in sources],
                       "prompt_set_hash": prompt_set.hash, "tagger": "toyworld", "sampler": "auto"}.items():
        study.set_user_attr(key, value)
    store = FileSystemArtifactStore(str(run / "artifacts"))
    rng = np.random.default_rng(1)
    uniform = dict(space.baselines())["uniform"]
    sampled = {name: float(rng.uniform(0.0, 0.5)) for name in uniform}
    for number, (label, params) in enumerate((("uniform", uniform), (None, sampled))):
        study.enqueue_trial(params)  # as the search enqueues its baselines
        trial = study.ask()
        for name in params:
            trial.suggest_float(name, -0.3, 1.2)
        recipe = space.recipe(params, family="sd1", sources=tuple(sources)).model_dump_json()
        result = evaluator.evaluate(EvalTask(task_id=number, trial_number=number, recipe=recipe))
        assert result.status == "ok", result.error
        # the loop's own writer (search.trial_record), as `mergesearch search` stores a trial
        record.write(trial, recipe=recipe, **record.result_fields("search", result),
                     render_seconds=result.render_seconds, worker=result.worker or "local", baseline=label)
        sheet = run / "sheet.webp"
        sheet.write_bytes(result.sheet)
        upload_artifact(artifact_store=store, file_path=str(sheet), study_or_trial=trial, mimetype="image/webp")
        study.tell(trial, result.value)
    return run


def test_fp16_export_verifies_inspects_and_loads_in_diffusers(scored_run, tmp_path, capsys):
    out = tmp_path / "best-fp16.safetensors"
    assert main(["export", str(scored_run), "-o", str(out), "--dtype", "fp16", "--verify", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    best = pick_trial(load_run(scored_run).open_study(), "best")
    assert f"verify PASS: trial {best.number} scored tag_recall {best.search:.4f} in the search" in printed
    print(printed)  # both scores, for the log

    assert main(["inspect", str(out), "--no-hash"]) == 0
    shown = capsys.readouterr().out
    assert "mergesearch.provenance" in shown and f"mergesearch.trial: {best.number}" in shown
    assert "mergesearch.prompt_set_hash" in shown and "sd_merge_recipe" in shown

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(TOY_CONFIG), local_files_only=True,
                                                    torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    ckpt = open_checkpoint(out)
    # the loader put the exported weights in place (not a fresh initialisation)
    assert torch.equal(pipe.unet.conv_in.weight, ckpt.tensor("model.diffusion_model.input_blocks.0.0.weight").float())
    image = pipe("red circle", num_inference_steps=3, guidance_scale=4.0, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels.shape == (32, 32, 3) and np.isfinite(pixels).all() and pixels.std() > 1.0
