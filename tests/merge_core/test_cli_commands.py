"""The merge, inspect and repair subcommands, run in-process through the real CLI parser."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sd_keysets import tiny_state_dict

from merge_core import Recipe, layout_for, save_safetensors
from search.cli import main


@pytest.fixture
def ab(tmp_path):
    sa, sb = tiny_state_dict("sd1", seed=1), tiny_state_dict("sd1", seed=2)
    return (
        sa,
        sb,
        save_safetensors(sa, tmp_path / "a.safetensors"),
        save_safetensors(sb, tmp_path / "b.safetensors"),
    )


def expected(sa, sb, key, alpha):
    return (sa[key].float() * (1 - alpha)).add_(sb[key].float(), alpha=alpha).half()


def test_merge_alpha(tmp_path, ab, capsys):
    sa, sb, pa, pb = ab
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(pa), str(pb), "--alpha", "0.3", "-o", str(out), "-q"]) == 0
    got = load_file(out)
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert torch.equal(got[key], expected(sa, sb, key, 0.3))


def test_merge_blocks_with_base_first(tmp_path, ab):
    sa, sb, pa, pb = ab
    values = [0.9] + [i / 24 for i in range(25)]  # BASE, IN00..OUT11
    out = tmp_path / "mbw.safetensors"
    recipe_file = tmp_path / "r.json"
    args = ["merge", str(pa), str(pb), "--blocks", ",".join(map(str, values)), "--vae-alpha", "0"]
    assert main([*args, "-o", str(out), "-q", "--save-recipe", str(recipe_file)]) == 0
    recipe = Recipe.load(recipe_file)
    blocks = layout_for("sd1").blocks
    assert recipe.weights["IN00"] == (0.0,) and recipe.weights["OUT11"] == (1.0,)
    assert recipe.weights["TE"] == (0.9,) and recipe.weights["VAE"] == (0.0,)  # BASE -> TE; VAE overridden
    got = load_file(out)
    key = "model.diffusion_model.output_blocks.3.1.proj_out.weight"  # OUT03 = value 16/24
    assert torch.equal(got[key], expected(sa, sb, key, values[1 + blocks.index("OUT03")]))
    te = "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight"
    assert torch.equal(got[te], expected(sa, sb, te, 0.9))
    # replaying the saved recipe gives the same file contents
    again = tmp_path / "again.safetensors"
    assert main(["merge", "--recipe", str(recipe_file), "-o", str(again), "-q"]) == 0
    replay = load_file(again)
    assert all(torch.equal(replay[k], got[k]) for k in got)


def test_merge_add_difference_and_te_alpha(tmp_path, ab):
    sa, sb, pa, pb = ab
    sc = tiny_state_dict("sd1", seed=3)
    pc = save_safetensors(sc, tmp_path / "c.safetensors")
    out = tmp_path / "ad.safetensors"
    assert main(["merge", str(pa), str(pb), str(pc), "--mode", "add-difference", "--alpha", "1",
                 "--te-alpha", "0", "--dtype", "fp32", "-o", str(out), "-q"]) == 0  # fmt: skip
    got = load_file(out)
    key = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    assert torch.equal(got[key], sa[key].float().add_(sb[key].float()).add_(sc[key].float(), alpha=-1.0))
    te = "cond_stage_model.transformer.text_model.final_layer_norm.bias"
    assert torch.equal(got[te], sa[te].float())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--blocks", "0.5,0.5"], "takes 25 values (IN00..OUT11) or 26 with BASE first; got 2"),
        (["--mode", "add-difference"], "add-difference merges 3 model(s) (A B C), got 2"),
        (["--mode", "tiess"], "unknown merge method 'tiess'; did you mean 'ties'?"),
        (["--mode", "ties", "--density", "1.5"], "density = 1.5 in IN00 is outside its range [0, 1]"),
        (["--mode", "ties", "--gamma", "1"], "ties takes no --gamma"),
        (["--mode", "slerp", "--weights", "1"], "--weights is for task-vector methods"),
        (["--blocks", "a,b"], "--blocks must be comma-separated numbers"),
    ],
)
def test_merge_usage_errors_are_one_line(tmp_path, ab, capsys, extra, message):
    _, _, pa, pb = ab
    out = tmp_path / "x.safetensors"
    assert main(["merge", str(pa), str(pb), *extra, "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_merge_refuses_sd1_with_sdxl(tmp_path, ab, capsys):
    _, _, pa, _ = ab
    px = save_safetensors(tiny_state_dict("sdxl", seed=2, max_dim=2), tmp_path / "xl.safetensors")
    assert main(["merge", str(pa), str(px), "-o", str(tmp_path / "x.safetensors"), "-q"]) == 1
    assert "xl.safetensors: is an SDXL checkpoint but this merge is SD1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "xl.safetensors"]


def test_inspect(tmp_path, ab, capsys):
    _, _, pa, pb = ab
    out = tmp_path / "m.safetensors"
    main(["merge", str(pa), str(pb), "--alpha", "0.3", "-o", str(out), "-q"])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "family      sd1" in text and "OUT11" in text and "sd_merge_recipe" in text
    assert main(["inspect", str(pa), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "sd1" and len(info["short_hash"]) == 10
    assert set(info["params_per_block"]) == set(layout_for("sd1").weight_ids)
    assert info["parameters"] == sum(
        t.numel() for k, t in load_file(pa).items() if not k.endswith("position_ids")
    )
    assert info["unknown_keys"] == [] and info["non_mergeable_keys"] == 1


def test_inspect_bad_file(tmp_path, capsys):
    p = tmp_path / "x.ckpt"
    p.write_bytes(b"\x80\x04garbage")
    assert main(["inspect", str(p)]) == 1
    assert "x.ckpt: not a checkpoint or truncated" in capsys.readouterr().err


def test_repair(tmp_path, ab, capsys):
    sa, sb, pa, pb = ab
    out = tmp_path / "r.safetensors"
    assert main(["repair", str(pa), str(pb), "--rank", "0", "-o", str(out), "-q"]) == 0
    assert "rank 0" in capsys.readouterr().out
    got = load_file(out)
    w = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert torch.equal(got[w], sa[w])  # rank 0: A's matrices
    bias = "model.diffusion_model.input_blocks.1.1.proj_in.bias"
    assert torch.equal(got[bias], sb[bias])  # 1-D: B's
    meta = json.loads(safe_open(out, "pt").metadata()["mergesearch_repair"])
    assert meta["rank"] == 0


def test_sigterm_mid_write_leaves_no_temporary(tmp_path):
    import os
    import signal

    from merge_core.safetensors_file import atomic_output
    from search.commands.merge import unwind_on_sigterm

    with (
        pytest.raises(SystemExit) as exc,
        unwind_on_sigterm(),
        atomic_output(tmp_path / "m.safetensors") as (fd, tmp),
    ):
        os.write(fd, b"partial")
        assert tmp.exists()
        os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
