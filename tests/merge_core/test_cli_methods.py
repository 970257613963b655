"""`mergesearch merge` with non-linear methods and `mergesearch methods`, through main()."""

import json

import torch
from sd_keysets import tiny_state_dict

from merge_core import load_state_dict, open_checkpoint, save_safetensors
from search.cli import main


def three(tmp_path):
    return [save_safetensors(tiny_state_dict("sd1", seed=i, max_dim=4, dtype=torch.float32),
                             tmp_path / f"m{i}.safetensors") for i in range(3)]


def test_ties_merge_and_recipe_replay(tmp_path, capsys):
    base, m1, m2 = three(tmp_path)
    out, recipe = tmp_path / "t.safetensors", tmp_path / "t.json"
    assert main(["merge", str(base), str(m1), str(m2), "--mode", "TIES", "--density", "1", "--lambda", "1",
                 "--weights", "1,0", "--dtype", "fp32", "-o", str(out), "--save-recipe", str(recipe), "-q"]) == 0
    got, want = load_state_dict(out), load_state_dict(m1)
    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    # density 1, one model at weight 1: base + (m1 - base), i.e. m1 up to fp32 rounding
    torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    meta = json.loads(open_checkpoint(out).metadata["sd_merge_recipe"])
    assert meta["interp_method"] == "ties" and meta["method_parameters"] == ["w1", "w2", "density", "lambda"]
    again = tmp_path / "again.safetensors"
    assert main(["merge", "--recipe", str(recipe), "--dtype", "fp32", "-o", str(again), "-q"]) == 0
    assert torch.equal(load_state_dict(again)[key], got[key])


def test_dare_recipe_without_seed_is_refused_before_writing(tmp_path, capsys):
    base, m1, m2 = three(tmp_path)
    out, recipe = tmp_path / "d.safetensors", tmp_path / "d.json"
    assert main(["merge", str(base), str(m1), str(m2), "--mode", "dare", "--seed", "7", "-o", str(out),
                 "--save-recipe", str(recipe), "-q"]) == 0
    data = json.loads(recipe.read_text())
    assert data["seed"] == 7
    data["seed"] = None
    recipe.write_text(json.dumps(data))
    capsys.readouterr()
    bad_out = tmp_path / "d2.safetensors"
    assert main(["merge", "--recipe", str(recipe), "-o", str(bad_out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "dare is random: the recipe needs a seed" in err and "Traceback" not in err
    assert not bad_out.exists()


def test_self_takes_one_model_and_methods_lists_the_registry(tmp_path, capsys):
    base, m1, _ = three(tmp_path)
    assert main(["merge", str(base), str(m1), "--mode", "self", "-o", str(tmp_path / "s.safetensors")]) == 1
    assert "self merges 1 model(s) (A), got 2" in capsys.readouterr().err
    assert main(["methods", "--markdown"]) == 0
    table = capsys.readouterr().out
    for name in ("weighted-sum", "ties", "dare", "slerp", "cosine-a", "train-difference", "smooth-add", "extract",
                 "tensor2", "self"):
        assert f"| `{name}` |" in table
    # every row has exactly six cells: pipes inside formulas (|A||B|) are escaped
    for line in table.splitlines():
        assert line.replace("\\|", "").count("|") == 7, line


def test_whole_tensor_keys_merged_on_several_threads_give_the_same_file(tmp_path, capsys, monkeypatch):
    """TIES keys run ahead on worker threads; the output must be the one-thread output, byte for byte,
    with any memory budget, and a key that fails must fail the same way with nothing left behind."""
    import threading

    import merge_core.merge as merge_mod

    srcs = [save_safetensors(tiny_state_dict("sd1", seed=i, max_dim=24, dtype=torch.float16),
                             tmp_path / f"w{i}.safetensors") for i in range(3)]
    args = [*map(str, srcs), "--mode", "ties", "--density", "0.3", "--lambda", "1.2", "--weights", "0.7,1.1", "-q"]
    names: set[str] = set()
    compute = merge_mod._computed_key_bytes

    def recording(*a, **k):
        names.add(threading.current_thread().name)
        return compute(*a, **k)

    monkeypatch.setattr(merge_mod, "_computed_key_bytes", recording)
    dare = [*map(str, srcs), "--mode", "dare", "--drop", "0.4", "--seed", "5", "--weights", "0.7,1.1", "-q"]
    outs = {}
    for threads, budget in (("1", merge_mod._AHEAD_BYTES), ("4", merge_mod._AHEAD_BYTES), ("3", 1)):
        monkeypatch.setenv("MERGESEARCH_MERGE_THREADS", threads)
        monkeypatch.setattr(merge_mod, "_AHEAD_BYTES", budget)
        for name, a in (("ties", args), ("dare", dare)):  # a whole-tensor and an elementwise method
            out = tmp_path / f"{name}{threads}.safetensors"
            assert main(["merge", *a, "-o", str(out)]) == 0
            outs[name, threads] = out.read_bytes()
    assert any(n.startswith("merge-key") for n in names) and "MainThread" in names
    for name in ("ties", "dare"):
        assert outs[name, "4"] == outs[name, "1"] and outs[name, "3"] == outs[name, "1"]

    # a non-finite source value in a middle key: the same error on one thread and on four, no output
    sd = load_state_dict(srcs[1])
    bad_key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    sd[bad_key] = sd[bad_key].clone()
    sd[bad_key].view(-1)[0] = float("inf")
    save_safetensors(sd, srcs[1])
    errs = {}
    for threads in ("1", "4"):
        monkeypatch.setenv("MERGESEARCH_MERGE_THREADS", threads)
        capsys.readouterr()
        out = tmp_path / f"bad{threads}.safetensors"
        assert main(["merge", *args, "-o", str(out)]) == 1
        errs[threads] = capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob(f"*bad{threads}*"))
    assert bad_key in errs["1"] and errs["4"] == errs["1"]

    monkeypatch.setenv("MERGESEARCH_MERGE_THREADS", "two")
    assert main(["merge", *args, "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "MERGESEARCH_MERGE_THREADS='two' is not a whole number" in capsys.readouterr().err


def test_an_elementwise_method_on_a_key_of_several_chunks_equals_one_whole_tensor_apply(tmp_path):
    """DARE runs chunk by chunk into the output buffer; a key of more than one chunk must come out
    as the method applied to the whole tensor at once (its mask depends only on the element index)."""
    from merge_core.maths import CHUNK
    from merge_core.methods import KeyContext, get_method

    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    g = torch.Generator().manual_seed(9)
    sds = [tiny_state_dict("sd1", seed=i, max_dim=4, dtype=torch.float32) for i in range(3)]
    for sd in sds:
        sd[key] = torch.randn(CHUNK * 2 + 1000, generator=g).reshape(-1, 8)
    srcs = [save_safetensors(sd, tmp_path / f"c{i}.safetensors") for i, sd in enumerate(sds)]
    out = tmp_path / "dare.safetensors"
    assert main(["merge", *map(str, srcs), "--mode", "dare", "--drop", "0.5", "--seed", "3", "--weights", "0.6,0.9",
                 "--lambda", "1.1", "--dtype", "fp32", "-o", str(out), "-q"]) == 0
    want = get_method("dare").apply([sd[key] for sd in sds], (0.6, 0.9, 0.5, 1.1), KeyContext(key, sds[0][key].shape, 0, 3))
    assert torch.equal(load_state_dict(out)[key], want)
