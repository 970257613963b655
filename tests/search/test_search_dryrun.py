"""`mergesearch search --dry-run`: the space and the measured cost, with nothing written."""

import re

import pytest
import torch
import yaml
from safetensors.torch import save_file

from benchmark.toyworld import random_checkpoint
from search.cli import main


@pytest.fixture(scope="module")
def toy_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry")
    models = {n: random_checkpoint(root / f"{n}.safetensors", seed=i) for i, n in enumerate(("base", "a", "b"))}
    from benchmark.toyworld.tagger import create_model

    torch.manual_seed(0)
    model, _ = create_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "tagger.safetensors")
    cfg = {
        "name": "dry", "renderer": "toyworld", "runs_dir": str(root / "runs"),
        "models": [{"name": n, "path": str(p)} for n, p in models.items()],
        "space": {"preset": "in-mid-out-attn-conv", "bounds": {"MID_conv": [-0.5, 1.5]},
                  "components": {"TE": "search", "VAE": "base"}},
        "objective": {"vocabulary": "toyworld", "n": 6, "m": 2, "tagger": "toyworld",
                      "tagger_options": {"weights": str(root / "tagger.safetensors")},
                      "render": {"steps": 2}, "batch_size": 2},
        "budget": {"trials": 30}, "workers": {"torch_threads": 1},
    }
    path = root / "dry.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def test_dry_run_prints_dimensions_bounds_count_and_cost_and_writes_nothing(toy_cfg, capsys):
    root, path = toy_cfg
    assert main(["search", str(path), "--dry-run", "--measure-batches", "1"]) == 0
    out = capsys.readouterr().out
    # in-mid-out split into attention and the rest wherever the toy UNet has attention (the toy's
    # spatial transformers, found from its keys), plus the searched TE; VAE held from base. x 2 partners.
    from merge_core import load_state_dict

    keys = [k for k in load_state_dict(root / "base.safetensors") if ".transformer_blocks." in k]
    split = {g for g, pre in (("IN", "input_blocks"), ("MID", "middle_block"), ("OUT", "output_blocks"))
             if any(k.startswith(f"model.diffusion_model.{pre}.") for k in keys)}
    n_dims = 2 * (3 + len(split) + 1)
    assert split == {"IN", "MID", "OUT"}  # the toy world has the SD1 topology
    assert f"parameters: {n_dims}" in out and f"{3 + len(split) + 1} group(s), {n_dims} dimension(s)" in out
    assert re.search(r"MID_conv\.a\s+\[-0\.5, 1\.5\]", out) and re.search(r"OUT_attn\.b\s+\[0, 1\]", out)
    assert "group IN_attn: IN00-IN11" in out and "VAE: held from base" in out
    per_trial = float(re.search(r"([\d.]+) s per trial", out)[1])
    per_hour = float(re.search(r"= (\d+) trials per hour", out)[1])
    assert per_trial > 0 and abs(per_hour - 3600 / per_trial) <= 0.01 * per_hour + 1
    assert "render batch 2" in out  # CPU: the score step
    assert not (root / "runs").exists()  # no run folder, no study


def test_dry_run_without_measuring(toy_cfg, capsys):
    _root, path = toy_cfg
    assert main(["search", str(path), "--dry-run", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 14" in out and "per trial" not in out
    # 3 parents + uniform, then a Sobol start of max(8, 14 // 2) = 8 before the GP
    assert "sampler auto (model-based after 12 completed trials, 4 of them baselines)" in out


def test_dry_run_names_the_method_and_its_fixed_parameters(toy_cfg, capsys):
    root, path = toy_cfg
    cfg = yaml.safe_load(path.read_text())
    cfg["space"] = {"groups": {"IN": ["IN00-IN11"], "MID": ["M00"], "OUT": ["OUT00-OUT11"]},
                    "method": {"name": "ties", "params": {"density": [0.1, 0.9], "lambda": 1.5}},
                    "components": {"TE": "base", "VAE": "base"}}
    ties = root / "ties.yaml"
    ties.write_text(yaml.safe_dump(cfg))
    assert main(["search", str(ties), "--dry-run", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "space: ties (weights affine) over 3 models (the base is 'base'), fixed lambda=1.5, 3 group(s)" in out
    assert re.search(r"OUT\.density\s+\[0\.1, 0\.9\]", out) and "parameters: 9" in out
    assert "5 of them baselines" in out  # 3 parents (base, a, b), the uniform merge and uniform:ties
    # a configured start replaces the default
    cfg["sampler_startup"] = 20
    ties.write_text(yaml.safe_dump(cfg))
    assert main(["search", str(ties), "--dry-run", "--no-measure"]) == 0
    assert "model-based after 20 completed trials" in capsys.readouterr().out
