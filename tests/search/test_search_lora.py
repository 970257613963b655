"""A search over one toy-world model plus a LoRA extracted from a specialist: per-group LoRA strengths
are searched, applied in memory by the Mixer (same tensors as the streaming merge), and the export
bakes them — its score matches the trial's (`export --verify`)."""

from __future__ import annotations

import json

import pytest
import torch
from optuna.trial import TrialState

from benchmark.renderer import Renderer
from benchmark.toyworld import zoo
from merge_core import Recipe, Source, layout_for, load_state_dict, merge_to_file
from merge_core.lora import extract_lora
from merge_core.recipe import LoraUse
from search.config import ConfigError, parse_config
from search.mixer import Mixer
from search.runner import prepare, run_search

GROUPS = {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"], "TE": ["TE"]}


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("lorasearch")
    z = zoo()
    path = root / "colorist-r16.safetensors"
    extract_lora(z["base"], z["colorist"], path, rank=16, dtype="fp32", progress=False)
    return root, z, path


def test_mixer_applies_recipe_loras_like_the_streaming_merge(tmp_path, lora):
    root, z, path = lora
    layout = layout_for("sd1")
    strengths = {w: 0.1 * (i + 1) for i, w in enumerate((*layout.blocks, "TE"))}  # distinct per block
    recipe = Recipe(family="sd1", method="affine", sources=(Source(path=str(z["base"])), Source(path=str(z["sizer"]))),
                    weights={w: (0.3,) for w in layout.weight_ids}, dtype="fp32",
                    loras=(LoraUse(path=str(path), strengths=strengths),))
    out = merge_to_file(recipe, tmp_path / "m.safetensors", progress=False)
    renderer = Renderer("toyworld")
    mixer = Mixer(renderer, [str(z["base"]), str(z["sizer"])])
    mixer.apply(recipe)
    expect = renderer.convert(load_state_dict(out))
    for name, module in renderer.modules.items():
        live = module.state_dict()
        for k, v in expect[name].items():
            assert torch.equal(live[k], v.float()), (name, k)
    # and the LoRA did something: without it the merge differs
    mixer.apply(recipe.model_copy(update={"loras": ()}))
    unet = renderer.modules["unet"].state_dict()
    assert any(not torch.equal(unet[k], v.float()) for k, v in expect["unet"].items())


def _config(root, z, path, **over):
    cfg = {
        "name": "lora", "renderer": "toyworld",
        "models": [{"name": "base", "path": str(z["base"])}],
        "loras": [{"name": "colorist", "path": str(path), "bounds": [0.0, 1.2], "groups": GROUPS}],
        "objective": {"vocabulary": "toyworld", "n": 6, "m": 5, "tagger": "toyworld",
                      "render": {"scheduler": "ddim", "steps": 4, "cfg": 4.0}, "batch_size": 6},
        "budget": {"trials": 5}, "sampler": "random", "pruner": {"enabled": False},
        "runs_dir": str(root / "runs"), "workers": {"backend": "local", "torch_threads": 1},
    }
    cfg.update(over)
    return parse_config(cfg)


@pytest.mark.slow
def test_search_one_model_plus_a_lora_and_export_verifies(lora):
    from search.review.export import export_trial
    from search.review.run import load_run
    from search.review.verify import verify_export

    root, z, path = lora
    prepared = prepare(_config(root, z, path))
    names = [d.name for d in prepared.space.dimensions()]
    assert names == ["lora.colorist.IN", "lora.colorist.MID", "lora.colorist.OUT", "lora.colorist.TE"]
    result = run_search(prepared)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert len({t.value for t in trials}) > 1  # the LoRA's strengths move the score (the Mixer applies them)
    assert trials[0].user_attrs["baseline"] == "parent:base"
    recipes = [Recipe.from_json(json.dumps(t.user_attrs["recipe"]) if isinstance(t.user_attrs["recipe"], dict)
                                else t.user_attrs["recipe"]) for t in trials]
    assert all(len(r.loras) == 1 for r in recipes)
    assert set(recipes[0].loras[0].strengths.values()) == {0.0}  # the baseline: LoRA off
    sampled = recipes[-1].loras[0].strengths
    assert sampled["IN03"] == sampled["IN11"] != sampled["M00"]  # one strength per group
    best = max((t for t in trials[1:]), key=lambda t: t.value)
    out = root / "best.safetensors"
    folder = load_run(result.info.run_dir if hasattr(result.info, "run_dir") else root / "runs" / "lora")
    exported = export_trial(folder, out, trial=best.number, dtype="fp32", progress=False)
    check = verify_export(folder, exported)
    assert check.ok, check.describe()


def test_bad_lora_in_a_search_config(tmp_path, lora):
    root, z, path = lora
    with pytest.raises(ConfigError, match="no such file"):
        prepare(_config(root, z, tmp_path / "missing.safetensors"))
    xl = tmp_path / "xl.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k.replace("lora_te_", "lora_te1_"): v for k, v in load_file(path).items()}, str(xl))
    with pytest.raises(ConfigError, match="loras.colorist: .*LoRA for SDXL"):
        prepare(_config(root, z, xl))
    with pytest.raises(ValueError, match="two models, or one model and a LoRA"):
        _config(root, z, path, loras=[])
