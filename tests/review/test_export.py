"""Export: the trial's recipe replayed from the source files, with provenance; bad input refused cleanly."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from merge_core import load_state_dict, open_checkpoint
from search.cli import main
from search.review import load_run, pick_trial, trial_recipe
from search.review.export import export_trial
from search.review.run import ReviewError

UNET_KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"  # block IN01
TE_KEY_PART = "self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def exported(export_run_shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "best.safetensors"
    assert main(["export", str(export_run_shared), "-o", str(out)]) == 0
    return out


def test_export_replays_the_best_recipe(export_run_shared, exported):
    study = load_run(export_run_shared).open_study()
    best = pick_trial(study, "best")
    recipe = trial_recipe(best)
    merged = load_state_dict(exported)
    sources = [load_state_dict(s.path) for s in recipe.sources]
    coefficients = recipe.coefficients()
    for key, block in ((UNET_KEY, "IN01"), (next(k for k in merged if TE_KEY_PART in k), "TE")):
        expected = sum(c * sd[key].float() for c, sd in zip(coefficients[block], sources, strict=True))
        # the search stores fp16 recipes: the fp32 sum rounded once to fp16
        assert torch.allclose(merged[key].float(), expected.half().float(), atol=1e-3, rtol=0), key
    assert recipe.dtype == "fp16" and merged[UNET_KEY].dtype == torch.float16  # the recipe's dtype by default


def test_export_metadata_holds_a1111_keys_and_provenance(export_run_shared, exported):
    study = load_run(export_run_shared).open_study()
    best = pick_trial(study, "best")
    meta = open_checkpoint(exported).metadata
    assert "sd_merge_recipe" in meta and "sd_merge_models" in meta
    record = json.loads(meta["mergesearch.provenance"])
    assert record["study"] == study.study_name and record["trial"] == best.number
    stored = study.trials[best.number]
    assert record["scores"]["search"] == pytest.approx(stored.value) == pytest.approx(record["scores"]["objective"])
    # the reported best is the confirmed one: its holdout and confirm scores were stored after it finished
    assert best.confirm is not None and record["scores"]["confirm"] == pytest.approx(best.confirm)
    assert record["scores"]["holdout_categories"] == best.holdout_categories
    assert record["comparisons"] and record["comparisons"][0].startswith(f"best = trial {best.number}")
    assert meta["mergesearch.tag_recall"] == f"{stored.value:.6f}"
    assert record["benchmark"]["prompt_set_hash"] == study.user_attrs["prompt_set_hash"]
    assert record["benchmark"]["tagger"] == "toyworld" and record["sampler"] == study.user_attrs["sampler"]
    assert record["recipe"]["weights"] == json.loads(stored.user_attrs["recipe"])["weights"]
    assert meta["mergesearch.trial"] == str(best.number)


def test_fp16_export_and_other_trial(export_run_shared, tmp_path):
    out = tmp_path / "t2.safetensors"
    result = export_trial(load_run(export_run_shared), out, trial=2, dtype="fp16", progress=False)
    assert result.trial == 2 and result.dtype == "fp16"
    ckpt = open_checkpoint(out)
    assert ckpt.dtype(UNET_KEY) == torch.float16
    second_parent = trial_recipe(pick_trial(load_run(export_run_shared).open_study(), 2)).sources[2].name
    assert json.loads(ckpt.metadata["mergesearch.provenance"])["scores"]["baseline"] == f"parent:{second_parent}"


def test_repair_with_contact_merge_keeps_provenance(export_run_shared, exported, toy_sources, tmp_path):
    out = tmp_path / "repaired.safetensors"
    result = export_trial(load_run(export_run_shared), out, repair_with=toy_sources[1], rank=2, progress=False)
    meta = open_checkpoint(out).metadata
    record = json.loads(meta["mergesearch.provenance"])
    assert record["repair"]["rank"] == 2 and record["trial"] == result.trial
    assert "sd_merge_recipe" in meta
    assert not list(tmp_path.glob(".*tmp*"))  # scratch files gone
    # rank-2 contact merge toward B: the result moved from the plain merge toward B, but is not B
    plain = load_state_dict(exported)[UNET_KEY]  # the same best trial without the repair
    repaired, b = load_state_dict(out)[UNET_KEY], load_state_dict(toy_sources[1])[UNET_KEY]
    assert (repaired - b).norm() < (plain - b).norm() and not torch.equal(repaired, b)


# ---- bad input -------------------------------------------------------------------------------------


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


def test_trial_that_does_not_exist(export_run_shared, tmp_path, capsys):
    assert main(["export", str(export_run_shared), "--trial", "99", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "has no trial 99" in _err(capsys)
    assert not (tmp_path / "x.safetensors").exists()


def test_trial_that_did_not_complete(export_run_shared, tmp_path, capsys):
    study = load_run(export_run_shared).open_study()
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert main(["export", str(export_run_shared), "--trial", str(failed.number),
                 "-o", str(tmp_path / "x.safetensors")]) == 2
    assert f"trial {failed.number} of study" in (msg := _err(capsys)) and "FAIL, not COMPLETE" in msg


def test_existing_output_needs_overwrite(export_run_shared, exported, capsys):
    before = exported.stat().st_mtime_ns
    assert main(["export", str(export_run_shared), "-o", str(exported)]) == 2
    assert "already exists; pass --overwrite" in _err(capsys)
    assert exported.stat().st_mtime_ns == before
    assert main(["export", str(export_run_shared), "-o", str(exported), "--overwrite"]) == 0


def test_modified_source_is_refused(export_run, tmp_path, capsys):
    recipe = trial_recipe(pick_trial(load_run(export_run).open_study()))
    victim = Path(recipe.sources[1].path)
    with open(victim, "r+b") as f:  # flip one byte of tensor data, as a re-save or bit rot would
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "x.safetensors"
    assert main(["export", str(export_run), "-o", str(out)]) == 2
    msg = _err(capsys)
    assert f"source {recipe.sources[1].name!r}" in msg and "modified or replaced" in msg
    assert not out.exists()


def test_moved_source_is_refused_then_relocated(export_run, tmp_path, capsys):
    recipe = trial_recipe(pick_trial(load_run(export_run).open_study()))
    moved = tmp_path / "elsewhere.safetensors"
    shutil.move(recipe.sources[2].path, moved)
    out = tmp_path / "x.safetensors"
    assert main(["export", str(export_run), "-o", str(out)]) == 2
    msg = _err(capsys)
    assert "not found (moved or deleted)" in msg and f"--source {recipe.sources[2].name}=NEW_PATH" in msg
    assert main(["export", str(export_run), "-o", str(out), "--source", f"{recipe.sources[2].name}={moved}"]) == 0
    assert json.loads(open_checkpoint(out).metadata["mergesearch.provenance"])["recipe"]["sources"][2]["path"] == str(moved)


def test_run_without_study(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({
        "study_name": "nothing", "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "artifact_dir": str(tmp_path), "config_path": str(tmp_path / "config.yaml")}))
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "has no study yet" in _err(capsys)


def test_unknown_relocation_name(export_run_shared, tmp_path):
    with pytest.raises(ReviewError, match=r"--source nope=\.\.\.: no source of that name"):
        export_trial(load_run(export_run_shared), tmp_path / "x.safetensors", relocate={"nope": tmp_path})


@pytest.mark.parametrize("target", ["source", "donor"])
def test_export_never_overwrites_a_source_or_the_repair_donor(export_run, tmp_path, capsys, target):
    import hashlib

    recipe = trial_recipe(pick_trial(load_run(export_run).open_study()))
    source = Path(recipe.sources[1].path)
    donor = Path(recipe.sources[0].path)
    victim = source if target == "source" else donor
    before = hashlib.sha256(victim.read_bytes()).hexdigest()
    args = ["export", str(export_run), "-o", str(victim), "--overwrite"]
    if target == "donor":
        args += ["--repair-with", str(donor)]
    assert main(args) == 2
    assert f"{victim}: is one of the inputs" in _err(capsys)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == before
    assert not [p for p in victim.parent.iterdir() if p.name.startswith(".")]


def test_fp8_export_holds_the_unet_in_fp8(export_run_shared, tmp_path):
    fp32 = export_trial(load_run(export_run_shared), tmp_path / "t32.safetensors", trial=2, dtype="fp32",
                        progress=False).path
    out = tmp_path / "t8.safetensors"
    assert main(["export", str(export_run_shared), "--trial", "2", "--dtype", "fp8_e4m3fn", "-o", str(out)]) == 0
    full, small = load_state_dict(fp32), load_state_dict(out)
    for key, t in small.items():
        if not t.is_floating_point():
            continue
        want = torch.float8_e4m3fn if key.startswith("model.diffusion_model.") else torch.float16
        assert t.dtype == want, key
        assert torch.equal(t.float(), full[key].to(want).float()), key


def test_threads_option_sets_torch_threads_and_has_a_sane_default(export_run_shared, tmp_path, capsys):
    from search.commands.export import default_threads

    before = torch.get_num_threads()
    try:
        assert main(["export", str(export_run_shared), "-o", str(tmp_path / "a.safetensors"), "--threads", "3"]) == 0
        assert torch.get_num_threads() == 3
        assert main(["export", str(export_run_shared), "-o", str(tmp_path / "b.safetensors")]) == 0
        assert torch.get_num_threads() == default_threads() == max(1, min(4, (os.cpu_count() or 2) // 2))
        assert main(["export", str(export_run_shared), "-o", str(tmp_path / "c.safetensors"), "--threads", "0"]) == 2
        assert "--threads 0: give 1 or more" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
