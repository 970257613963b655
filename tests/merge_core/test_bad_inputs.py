"""Every bad input gives one clear error naming the file (and key) and leaves no output behind."""

import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from sd_keysets import tiny_state_dict

from merge_core import CheckpointError, Recipe, Source, merge_to_file, save_safetensors


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _recipe(paths, family="sd1"):
    return Recipe.uniform(family, "weighted-sum", [Source(path=str(p)) for p in paths], (0.5,))


@pytest.fixture
def good(tmp_path):
    return save_safetensors(tiny_state_dict("sd1", seed=1), tmp_path / "good.safetensors")


def bad_file(tmp_path, kind):
    if kind == "truncated":
        p = save_safetensors(tiny_state_dict("sd1", seed=2), tmp_path / "truncated.safetensors")
        p.write_bytes(p.read_bytes()[:-64])
        return p, r"truncated\.safetensors: truncated: key '.+'"
    if kind == "not-a-checkpoint":
        p = tmp_path / "readme.safetensors"
        p.write_text("# my model\nthis is a model card\n")
        return p, r"readme\.safetensors: not a safetensors file"
    if kind == "pickle-with-code":
        p = tmp_path / "evil.ckpt"
        p.write_bytes(pickle.dumps({"state_dict": {"x": _Payload()}}, protocol=2))  # a bare pickle
        return p, r"evil\.ckpt: refused"
    if kind == "sdxl":
        p = save_safetensors(tiny_state_dict("sdxl", seed=2, max_dim=2), tmp_path / "xl.safetensors")
        return p, r"xl\.safetensors: is an SDXL checkpoint but this merge is SD1"
    if kind == "missing-key":
        sd = tiny_state_dict("sd1", seed=2)
        del sd["model.diffusion_model.output_blocks.5.1.proj_out.weight"]
        p = save_safetensors(sd, tmp_path / "pruned.safetensors")
        return (
            p,
            r"pruned\.safetensors: has no key 'model\.diffusion_model\.output_blocks\.5\.1\.proj_out\.weight' \(UNet block OUT05\)",
        )
    if kind == "nan":
        sd = tiny_state_dict("sd1", seed=2)
        sd["model.diffusion_model.input_blocks.7.0.in_layers.2.weight"][0, 0, 0, 0] = float("nan")
        p = save_safetensors(sd, tmp_path / "nan.safetensors")
        return (
            p,
            r"nan\.safetensors: key 'model\.diffusion_model\.input_blocks\.7\.0\.in_layers\.2\.weight' holds NaN",
        )
    if kind == "shape":
        sd = tiny_state_dict("sd1", seed=2)
        sd["model.diffusion_model.out.2.weight"] = torch.zeros(1, 1, 1, 1, dtype=torch.float16)
        p = save_safetensors(sd, tmp_path / "other.safetensors")
        return p, r"other\.safetensors: key 'model\.diffusion_model\.out\.2\.weight' has shape"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["truncated", "not-a-checkpoint", "pickle-with-code", "sdxl", "missing-key", "nan", "shape"]
)
def test_bad_source(tmp_path, monkeypatch, good, kind):
    monkeypatch.chdir(tmp_path)
    bad, message = bad_file(tmp_path, kind)
    out = tmp_path / "out" / "merged.safetensors"
    out.parent.mkdir()
    with pytest.raises(CheckpointError, match=message):
        if kind in ("truncated", "not-a-checkpoint", "pickle-with-code"):
            from merge_core import open_checkpoint

            open_checkpoint(bad)  # refused on opening, before any recipe exists
        merge_to_file(_recipe([good, bad]), out, progress=False)
    assert list(out.parent.iterdir()) == []  # no output and no temporary left
    assert not (tmp_path / "pwned").exists()


def _unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked
    locked.chmod(0o700)  # root writes anywhere it can chmod: use sysfs, which refuses new files
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(name)
    pytest.skip("no unwritable folder on this machine")


def test_unwritable_output(tmp_path, good):
    other = save_safetensors(tiny_state_dict("sd1", seed=3), tmp_path / "b.safetensors")
    folder = _unwritable_folder(tmp_path)
    before = set(folder.iterdir())
    try:
        with pytest.raises(
            CheckpointError, match=r"merged\.safetensors: cannot write in .*; choose a writable folder"
        ):
            merge_to_file(_recipe([good, other]), folder / "merged.safetensors", progress=False)
        assert set(folder.iterdir()) == before
    finally:
        folder.chmod(0o700) if folder.is_relative_to(tmp_path) else None


def test_output_in_a_missing_folder(tmp_path, good):
    other = save_safetensors(tiny_state_dict("sd1", seed=3), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="does not exist; create it first"):
        merge_to_file(_recipe([good, other]), tmp_path / "nope" / "m.safetensors", progress=False)


def test_output_overflow_names_the_fix(tmp_path):
    a = tiny_state_dict("sd1", seed=1, dtype=torch.float32)
    b = tiny_state_dict("sd1", seed=2, dtype=torch.float32)
    a["model.diffusion_model.out.0.bias"][0] = 200000.0  # fine in fp32, past the fp16 range
    pa = save_safetensors(a, tmp_path / "a.safetensors")
    pb = save_safetensors(b, tmp_path / "b.safetensors")
    with pytest.raises(
        CheckpointError, match=r"'model\.diffusion_model\.out\.0\.bias' overflows float16; use --dtype bf16"
    ):
        merge_to_file(_recipe([pa, pb]), tmp_path / "m.safetensors", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
