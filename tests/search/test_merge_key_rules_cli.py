"""`mergesearch merge --elemental/--include/--exclude/--adjust`: applied, recorded, and bad input refused."""

import json

import pytest
import torch

from benchmark.toyworld import random_checkpoint
from merge_core import load_state_dict, open_checkpoint
from search.cli import main

U = "model.diffusion_model."


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return random_checkpoint(root / "a.safetensors", seed=0), random_checkpoint(root / "b.safetensors", seed=1)


def test_rules_are_applied_and_recorded(pair, tmp_path):
    a, b = pair
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "--dtype", "fp32", "-q", "-o", str(out),
                 "--elemental", "OUT03-OUT05:attn2:1", "--exclude", "VAE", "--adjust", "0,0,0,0,0,1,0,0"]) == 0
    sa, sb, got = load_state_dict(a), load_state_dict(b), load_state_dict(out)
    k = U + "output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    torch.testing.assert_close(got[k], sb[k].float())  # alpha 1 = B
    k = U + "output_blocks.4.1.transformer_blocks.0.attn1.to_v.weight"
    torch.testing.assert_close(got[k], 0.5 * sa[k].float() + 0.5 * sb[k].float())
    k = "first_stage_model.decoder.conv_in.weight"
    torch.testing.assert_close(got[k], sa[k].float())
    k = U + "out.2.bias"  # COL1 = 1 (SD1: cyan-red = [1, 1, 0]) -> +0.02 on latent channels 1 and 2
    torch.testing.assert_close(got[k], 0.5 * sa[k].float() + 0.5 * sb[k].float() + torch.tensor([0, .02, .02, 0]))
    recipe = json.loads(open_checkpoint(out).metadata["mergesearch_recipe"])
    assert recipe["selection"] == {"mode": "exclude", "blocks": ["VAE"], "elements": []}
    assert recipe["elemental"][0]["blocks"] == ["OUT03", "OUT04", "OUT05"]


@pytest.mark.parametrize(("args", "message"), [
    (["--elemental", "OUT3:attn2:1"], "unknown block 'OUT3' for SD1; did you mean OUT03?"),
    (["--include", "IN01 MIDDLE"], "unknown block 'MIDDLE' for SD1; did you mean M00?"),
    (["--adjust", "1,2,3,4,5,6,7"], "has 7 value(s); it takes 8"),
    (["--elemental", "IN01:attn"], "exactly two ':'"),
])
def test_bad_rules_fail_before_writing(pair, tmp_path, capsys, args, message):
    a, b = pair
    out = tmp_path / "out.safetensors"
    assert main(["merge", str(a), str(b), "-q", "-o", str(out), *args]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
