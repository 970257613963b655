import hashlib
import os

import pytest
import torch
from sd_keysets import tiny_state_dict

from merge_core import (
    CheckpointError,
    Family,
    file_sha256,
    load_state_dict,
    open_checkpoint,
    save_safetensors,
    short_hash,
)
from merge_core.safetensors_file import read_header


def test_safetensors_round_trip_is_lazy_and_exact(tmp_path):
    sd = tiny_state_dict("sd1")
    sd["first_stage_model.extra_bf16"] = torch.randn(3, 2).to(torch.bfloat16)
    sd["scalar"] = torch.tensor(1.5)
    p = save_safetensors(sd, tmp_path / "m.safetensors", {"note": "x"})
    ckpt = open_checkpoint(p)
    assert set(ckpt.keys()) == set(sd)
    assert ckpt.metadata == {"note": "x"}
    assert ckpt.format == "safetensors" and ckpt.family == Family.SD1
    for k, t in sd.items():
        assert ckpt.shape(k) == tuple(t.shape) and ckpt.dtype(k) == t.dtype
        assert torch.equal(ckpt.tensor(k), t), k
    # a file written by the reference implementation reads the same
    from safetensors.torch import load_file

    ref = load_file(p)
    assert all(torch.equal(ref[k], sd[k]) for k in sd)
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_hash_matches_sha256_and_a1111_short_hash(tmp_path):
    p = save_safetensors({"a": torch.arange(10.0)}, tmp_path / "m.safetensors")
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    ckpt = open_checkpoint(p)
    assert ckpt.sha256 == sha == file_sha256(p)
    assert ckpt.short_hash == short_hash(sha) == sha[:10]


def test_ckpt_with_state_dict_wrapper_and_old_text_encoder_keys(tmp_path):
    sd = tiny_state_dict("sd1")
    te = "cond_stage_model.transformer.text_model."
    old = {k.replace(te, "cond_stage_model.transformer."): v for k, v in sd.items()}
    old["model_ema.decay"] = torch.tensor(0.9999)
    p = tmp_path / "old.ckpt"
    torch.save({"state_dict": old, "global_step": 470000, "epoch": 3}, p)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "pickle"
    assert set(ckpt.keys()) == set(sd)  # normalised, EMA kept apart
    assert ckpt.ema_keys() == ["model_ema.decay"]
    assert torch.equal(ckpt.tensor(te + "final_layer_norm.weight"), sd[te + "final_layer_norm.weight"])
    loaded = load_state_dict(p)
    assert set(loaded) == set(sd) and "model_ema.decay" in load_state_dict(p, include_ema=True)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_with_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": _Payload()}}, p)  # what a malicious .ckpt looks like
    with pytest.raises(CheckpointError, match="refused.*could run code"):
        open_checkpoint(p)
    assert not (tmp_path / "pwned").exists()


def test_truncated_safetensors_names_the_key(tmp_path):
    p = save_safetensors(tiny_state_dict("sd1"), tmp_path / "m.safetensors")
    data = p.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: truncated: key '.*' ends at byte"):
        open_checkpoint(cut)
    stub = tmp_path / "stub.safetensors"
    stub.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(stub)


def test_truncated_ckpt(tmp_path):
    p = tmp_path / "m.ckpt"
    torch.save(tiny_state_dict("sd1"), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="m.ckpt: not a checkpoint or truncated"):
        open_checkpoint(p)


@pytest.mark.parametrize("name", ["notes.safetensors", "notes.ckpt", "notes.txt"])
def test_non_checkpoint_files(tmp_path, name):
    p = tmp_path / name
    p.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        open_checkpoint(p)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")


def test_header_offsets_are_validated(tmp_path):
    p = save_safetensors(
        {"a": torch.zeros(4), "b": torch.ones(2, 2, dtype=torch.float16)}, tmp_path / "x.safetensors"
    )
    infos, _ = read_header(p)
    assert infos["b"].nbytes == 8 and infos["a"].start % 8 == 0


def test_failed_save_leaves_nothing(tmp_path):
    class Boom(dict):
        def values(self):
            yield torch.zeros(2)
            raise RuntimeError("disk on fire")

    tensors = Boom(a=torch.zeros(2), b=torch.zeros(2))
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_safetensors(tensors, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_hash_cache_survives_the_process_and_notices_changes(tmp_path, monkeypatch):
    from merge_core import hashing

    p = save_safetensors({"a": torch.arange(10.0)}, tmp_path / "m.safetensors")
    sha = file_sha256(p)
    cache = hashing.cache_file()
    assert cache is not None and sha in cache.read_text()
    hashing._CACHE.clear()  # a new process: only the file cache is left
    monkeypatch.setattr(hashing.hashlib, "sha256", lambda: (_ for _ in ()).throw(AssertionError("re-hashed")))
    assert file_sha256(p) == sha
    monkeypatch.undo()
    monkeypatch.setenv("MERGESEARCH_CACHE_DIR", str(cache.parent))
    save_safetensors({"a": torch.arange(11.0)}, p)  # changed file: new size and mtime
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest() != sha


def test_hash_of_files_across_chunk_boundaries(tmp_path, monkeypatch):
    from merge_core import hashing

    monkeypatch.setattr(hashing, "_CHUNK", 4096)
    for n in (0, 1, 4096, 3 * 4096 + 7):
        p = tmp_path / f"f{n}"
        p.write_bytes(os.urandom(n))
        assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_paced_hash_waits_for_the_reader(tmp_path, monkeypatch):
    import threading
    import time

    from merge_core import hashing

    monkeypatch.setattr(hashing, "_CHUNK", 1000)
    p = tmp_path / "f"
    p.write_bytes(os.urandom(10_000))
    pacer = hashing.Pacer(window=2000)
    result = []
    t = threading.Thread(target=lambda: result.append(file_sha256(p, pacer=pacer)))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not result  # stopped at the window's edge
    pacer.advance(5000)
    time.sleep(0.1)
    assert t.is_alive()
    pacer.release()
    t.join(timeout=5)
    assert result == [hashlib.sha256(p.read_bytes()).hexdigest()]
