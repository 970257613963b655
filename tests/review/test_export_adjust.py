"""`export --adjust`: the trial's merge with Adjust on top, recorded in the exported recipe."""

from __future__ import annotations

import json

import torch

from merge_core import load_state_dict, open_checkpoint
from search.cli import main

BIAS = "model.diffusion_model.out.2.bias"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def test_export_with_adjust(export_run_shared, tmp_path, capsys):
    plain, adjusted = tmp_path / "plain.safetensors", tmp_path / "adj.safetensors"
    assert main(["export", str(export_run_shared), "-o", str(plain), "--dtype", "fp32"]) == 0
    assert main(["export", str(export_run_shared), "-o", str(adjusted), "--dtype", "fp32",
                 "--adjust", "2,0,0,1,-3,0,0,0"]) == 0
    a, b = load_state_dict(plain), load_state_dict(adjusted)
    # by hand: contrast 1 -> +0.02 on channel 0; brightness -3 (SD1) -> 0.02*(3, -1, -2) on channels 1..3
    torch.testing.assert_close(b[BIAS], a[BIAS] + torch.tensor([0.02, 0.06, -0.02, -0.04]), rtol=0, atol=1e-6)
    torch.testing.assert_close(b[CONV_IN], a[CONV_IN] * 0.98, rtol=1e-6, atol=0)
    recipe = json.loads(open_checkpoint(adjusted).metadata["mergesearch_recipe"])
    assert recipe["adjust"]["values"] == [2, 0, 0, 1, -3, 0, 0, 0]
    from merge_core.history import search

    rows = search(str(adjusted))  # the export is in the merge history, with its trial and recipe
    assert rows and rows[0].command == "export" and rows[0].recipe["adjust"]["values"] == [2, 0, 0, 1, -3, 0, 0, 0]
    assert rows[0].details["trial"] == str(json.loads(open_checkpoint(adjusted).metadata["mergesearch.trial"]))
    bad = tmp_path / "bad.safetensors"
    assert main(["export", str(export_run_shared), "-o", str(bad), "--adjust", "1,2"]) == 2
    assert "--adjust: Adjust '1,2' has 2 value(s); it takes 8" in capsys.readouterr().err
    assert not bad.exists()
