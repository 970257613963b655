"""The command line with inputs as users give them: recipes, block lists, odd weights, output paths that
are folders, sources or the wrong format, diffusers folders, closed pipes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sd_keysets import tiny_checkpoint

from merge_core import Recipe
from search.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ab(tmp_path):
    paths = []
    for i, name in enumerate(("a", "b")):
        p = tmp_path / f"{name}.safetensors"
        save_file(tiny_checkpoint("sd1", seed=i + 1), str(p))
        paths.append(p)
    return paths


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


def err(capsys) -> str:
    return capsys.readouterr().err


def test_recipe_dtype_is_kept_unless_dtype_is_given(tmp_path, ab):
    a, b = ab
    recipe = tmp_path / "r.json"
    assert main(["merge", str(a), str(b), "--dtype", "fp32", "-o", str(tmp_path / "first.safetensors"), "-q",
                 "--save-recipe", str(recipe)]) == 0
    assert Recipe.load(recipe).dtype == "fp32"
    assert main(["merge", "--recipe", str(recipe), "-o", str(tmp_path / "m.safetensors"), "-q"]) == 0
    assert {t.dtype for t in load_file(tmp_path / "m.safetensors").values() if t.is_floating_point()} == {torch.float32}
    assert main(["merge", "--recipe", str(recipe), "--dtype", "bf16", "-o", str(tmp_path / "h.safetensors"), "-q"]) == 0
    assert {t.dtype for t in load_file(tmp_path / "h.safetensors").values() if t.is_floating_point()} == {torch.bfloat16}


def test_save_recipe_records_each_source_sha256(tmp_path, ab):
    a, b = ab
    recipe = tmp_path / "r.json"
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors"), "-q", "--save-recipe", str(recipe)]) == 0
    assert [s.sha256 for s in Recipe.load(recipe).sources] == [sha(a), sha(b)]


@pytest.mark.parametrize("where", ["missing-folder", "a-folder", "the-output"])
def test_save_recipe_is_checked_before_the_merge(tmp_path, ab, capsys, where):
    a, b = ab
    out = tmp_path / "m.safetensors"
    target = {"missing-folder": tmp_path / "nope" / "r.json", "a-folder": tmp_path, "the-output": out}[where]
    assert main(["merge", str(a), str(b), "-o", str(out), "-q", "--save-recipe", str(target)]) == 1
    msg = err(capsys)
    assert f"--save-recipe {target}:" in msg, msg
    assert {"missing-folder": "does not exist; create it first", "a-folder": "is a folder",
            "the-output": "an input or the output"}[where] in msg
    assert not out.exists() and leftovers(tmp_path, a, b) == []


def test_empty_block_field_is_refused_naming_its_position(tmp_path, ab, capsys):
    a, b = ab
    values = ["1"] * 25
    values[1] = ""
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(b), "--blocks", ",".join(values), "-o", str(out), "-q"]) == 1
    assert "--blocks has an empty field at position 2 (IN01)" in err(capsys)
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--alpha", "5"), ("--alpha", "-1.5"), ("--te-alpha", "2.5")])
def test_weights_outside_the_usual_range_warn(tmp_path, ab, capsys, flag, value):
    a, b = ab
    assert main(["merge", str(a), str(b), flag, value, "-o", str(tmp_path / "m.safetensors"), "-q"]) == 0
    msg = err(capsys)
    assert msg.startswith("mergesearch: warning: weights outside [-1, 2] (") and f"={value}" in msg, msg


def test_weights_in_range_do_not_warn(tmp_path, ab, capsys):
    a, b = ab
    assert main(["merge", str(a), str(b), "--alpha", "2", "-o", str(tmp_path / "m.safetensors"), "-q"]) == 0
    assert "warning" not in err(capsys)


@pytest.mark.parametrize("name", ["out.ckpt", "out.pt", "out", "existing_folder"])
def test_output_name_must_be_safetensors_and_not_a_folder(tmp_path, ab, capsys, name):
    a, b = ab
    out = tmp_path / name
    if name == "existing_folder":
        out.mkdir()
    assert main(["merge", str(a), str(b), "-o", str(out) + ("/" if out.is_dir() else ""), "-q"]) == 1
    msg = err(capsys)
    if name == "existing_folder":  # OUT/ asks for a diffusers folder; an existing one is never written into
        assert f"{out}: already exists; choose another folder or pass --overwrite" in msg
        assert list(out.iterdir()) == []
    else:
        assert f"{out}: the merge is written as safetensors" in msg and "name it out.safetensors" in msg
        assert not out.exists()
    assert leftovers(tmp_path, a, b, out) == []


@pytest.mark.parametrize("command", ["merge", "repair"])
@pytest.mark.parametrize("target", [0, 1, "hardlink"])
def test_no_command_writes_over_its_inputs(tmp_path, ab, capsys, command, target):
    a, b = ab
    if target == "hardlink":
        victim = tmp_path / "link_to_a.safetensors"
        os.link(a, victim)
    else:
        victim = ab[target]
    before = [sha(a), sha(b)]
    args = [command, str(a), str(b), "-o", str(victim), "--overwrite", "-q"]
    assert main(args) == 1
    assert f"{victim}: is one of the inputs" in err(capsys)
    assert [sha(a), sha(b)] == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_diffusers_folder_given_as_a_model(tmp_path, ab, capsys):
    a, _b = ab
    folder = tmp_path / "some_diffusers_folder"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(folder) + "/", "-o", str(out), "-q"]) == 1
    assert f"{folder}: model_index.json names no unet" in err(capsys)  # read as a diffusers folder, refused by name
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["merge", str(a), str(plain), "-o", str(out), "-q"]) == 1
    assert f"{plain}: is a folder, not a checkpoint file" in err(capsys)
    assert not out.exists()


def test_merge_cli_fp8_sources_and_fp8_output(tmp_path):
    paths = []
    for i in (1, 2):
        p = tmp_path / f"x{i}.safetensors"
        fp8 = torch.float8_e4m3fn if i == 2 else torch.float16
        save_file(tiny_checkpoint("sdxl", seed=i, max_dim=2, dtypes=lambda k, d=fp8: d if k.startswith("model.") else torch.float16), str(p))
        paths.append(p)
    out = tmp_path / "m.safetensors"
    assert main(["merge", *map(str, paths), "--alpha", "0.5", "--dtype", "fp8_e4m3fn", "-o", str(out), "-q"]) == 0
    ta, tb, tm = load_file(paths[0]), load_file(paths[1]), load_file(out)
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    assert tm[key].dtype == torch.float8_e4m3fn
    want = (0.5 * ta[key].double() + 0.5 * tb[key].double()).float().to(torch.float8_e4m3fn)
    np.testing.assert_array_equal(tm[key].float().numpy(), want.float().numpy())


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MERGESEARCH_HASH_CACHE": "0"}
    return subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    """Output longer than a pipe's buffer, read by `head`: no BrokenPipeError traceback, exit as SIGPIPE would."""
    big = tmp_path / "merged.safetensors"
    save_file(tiny_checkpoint("sd1", seed=1, max_dim=2), str(big), metadata={f"note{i}": "x" * 1000 for i in range(300)})
    py = sys.executable
    for args in ("inspect merged.safetensors --json --no-hash", "inspect merged.safetensors --no-hash"):
        done = _run(f"{py} -m search.cli {args} | head -c 10 >/dev/null", tmp_path)
        assert done.stderr == "", done.stderr
        assert done.returncode == 141, (done.returncode, done.stderr)


def test_save_recipe_in_a_folder_that_cannot_be_written(tmp_path, ab, capsys, monkeypatch):
    """A read-only filesystem (root ignores permission bits, so the refusal is simulated at the write)."""
    import tempfile

    a, b = ab
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.NamedTemporaryFile

    def refuse(*args, dir=None, **kw):
        if Path(dir) == ro:
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(a), str(b), "-o", str(out), "-q", "--save-recipe", str(ro / "r.json")]) == 1
    assert f"--save-recipe {ro / 'r.json'}: cannot write in {ro} (Read-only file system)" in err(capsys)
    assert not out.exists()
