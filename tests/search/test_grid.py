"""`mergesearch grid`: cells equal renders of the streamed merge of their recipes; reuse; bad input
refused before anything is loaded or rendered."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmark import Renderer, RenderSettings
from benchmark.toyworld import random_checkpoint
from merge_core import Recipe, merge_to_file
from search.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid-models")
    return [str(random_checkpoint(root / f"{n}.safetensors", seed=i)) for i, n in enumerate("abc")]


@pytest.mark.parametrize(("axis", "message"), [
    ("pinpoint=IN01|OUT3-OUT06", "unknown block 'OUT3' for SD1; did you mean OUT03?"),
    ("pinpoint=NOT MID OUT03", "unknown block 'MID' for SD1; did you mean M00?"),
    ("elemental=IN4:attn2:0.5", "unknown block 'IN4' for SD1; did you mean IN04?"),
    ("mbw=IN00-IN11|OUTT", "unknown block 'OUTT'"),
    ("alpha=", "axis alpha has no values"),
    ("prompt=|", "axis prompt has no values"),
    ("adjust=1,2,3", "has 3 value(s); it takes 8"),
    ("alpah=0,1", "unknown kind 'alpah'; did you mean 'alpha'?"),
    ("method=weighted-sum,add-difference", "add-difference merges 3 models (A B C); give model C"),
    ("method=slerpp", "unknown merge method 'slerpp'"),
])
def test_bad_grids_fail_before_rendering(models, tmp_path, capsys, axis, message):
    out = tmp_path / "g"
    extra = ["--y", "alpha=0,1"] if axis.startswith("pinpoint") else []
    assert main(["grid", *models[:2], "--x", axis, *extra, "--prompt", "red, circle", "-q", "-o", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing loaded, nothing rendered, nothing written


def test_pinpoint_needs_an_alpha_axis_and_a_prompt_is_needed(models, tmp_path, capsys):
    assert main(["grid", *models[:2], "--x", "pinpoint=IN01", "--prompt", "x", "-o", str(tmp_path / "g")]) == 1
    assert "add an alpha axis" in capsys.readouterr().err
    assert main(["grid", *models[:2], "--x", "alpha=0,1", "-o", str(tmp_path / "g")]) == 1
    assert "no prompt" in capsys.readouterr().err


def reference_image(recipe_json, prompt, seed, settings, tmp_path, name):
    """The cell rendered from the streamed merge of its recipe. The grid renders the cells of one recipe
    (here both seeds of a column) in one batch, and a batch of two rounds a pixel differently from a
    batch of one now and then, so the reference is rendered in the same batch."""
    recipe = Recipe.model_validate(recipe_json)
    renderer = Renderer("toyworld")
    renderer.load_checkpoint(merge_to_file(recipe, tmp_path / f"{name}.safetensors", progress=False))
    return np.asarray(renderer.render([prompt, prompt], settings, seeds=[1, 2])[[1, 2].index(seed)])


@pytest.mark.slow
def test_grid_cells_equal_streamed_merges_and_are_reused(models, tmp_path):
    out = tmp_path / "grid"
    args = ["grid", *models[:2], "--x", "alpha=0,0.7", "--y", "seed=1,2", "--z", "pinpoint=IN00-IN11|NOT M00 OUT03-OUT06",
            "--alpha", "0.2", "--prompt", "red, circle", "--steps", "2", "--scheduler", "euler", "--cell", "32",
            "--elemental", "OUT00-OUT11:attn2:0.9", "--adjust", "0,0,0,0,3,0,0,0", "-q", "-o", str(out)]
    assert main(args) == 0
    data = json.loads((out / "grid.json").read_text())
    assert data["timings"]["rendered"] == 8 and data["grids"] == ["grid-z0.png", "grid-z1.png"]
    assert all((out / g).is_file() for g in data["grids"])
    cells = {(c["x"], c["y"], c["z"]): c for c in data["cells"]}
    # pinpoint: alpha 0.7 in IN00..IN11 only, --alpha elsewhere; the seed axis shares one merge per column
    assert cells[(1, 0, 0)]["recipe"]["weights"]["IN05"] == [0.7]
    assert cells[(1, 0, 0)]["recipe"]["weights"]["OUT05"] == [0.2] and cells[(1, 0, 0)]["recipe"]["weights"]["TE"] == [0.2]
    assert cells[(1, 1, 1)]["recipe"]["weights"]["M00"] == [0.2] and cells[(1, 1, 1)]["recipe"]["weights"]["OUT05"] == [0.2]
    assert cells[(1, 1, 1)]["recipe"]["weights"]["IN05"] == [0.7]
    settings = RenderSettings(scheduler="euler", steps=2, cfg=4.0)
    for pos in ((1, 0, 0), (0, 1, 1), (1, 1, 1)):
        c = cells[pos]
        got = np.asarray(Image.open(out / c["image"]).convert("RGB"))
        want = reference_image(c["recipe"], c["prompt"], c["seed"], settings, tmp_path, "-".join(map(str, pos)))
        np.testing.assert_array_equal(got, want, err_msg=str(pos))
    # the same grid again: every cell reused, same images
    before = {c["image"]: (out / c["image"]).read_bytes() for c in data["cells"]}
    assert main(args) == 0
    again = json.loads((out / "grid.json").read_text())
    assert again["timings"]["rendered"] == 0 and again["timings"]["reused"] == 8
    assert {c["image"]: (out / c["image"]).read_bytes() for c in again["cells"]} == before


def test_axis_values_become_recipes(models):
    """alpha ranges, MBW rows (numbers with BASE, or a block set), random weights: the recipes by hand."""
    from merge_core import layout_for
    from search.grid.axes import GridBase, build_cells, parse_axis

    sd1 = layout_for("sd1")
    assert parse_axis("alpha=0..1x5", sd1).values == (0.0, 0.25, 0.5, 0.75, 1.0)
    row = ",".join(["0.9"] + [str(i / 100) for i in range(25)])  # BASE first, then IN00..OUT11
    axes = [parse_axis(f"mbw={row}|OUT00-OUT11", sd1), parse_axis("random=2", sd1)]
    cells = build_cells(GridBase(models=tuple(models[:2]), prompt="red"), axes[:1], sd1, "sd1", lambda s: s)
    w = cells[0].recipe["weights"]
    assert w["IN00"] == [0.0] and w["M00"] == [0.12] and w["OUT11"] == [0.24] and w["TE"] == [0.9] == w["VAE"]
    w = cells[1].recipe["weights"]
    assert w["IN05"] == [0.0] and w["OUT05"] == [1.0] and w["TE"] == [0.5]  # block set: 1 there, 0 elsewhere
    dice = build_cells(GridBase(models=tuple(models[:2]), prompt="red", dice_seed=7), axes[1:], sd1, "sd1",
                       lambda s: s)
    again = build_cells(GridBase(models=tuple(models[:2]), prompt="red", dice_seed=7), axes[1:], sd1, "sd1",
                        lambda s: s)
    assert [c.recipe for c in dice] == [c.recipe for c in again]  # seeded: the same rolls every time
    rolls = [c.recipe["weights"]["IN04"][0] for c in dice]
    assert rolls[0] != rolls[1] and all(0 <= r < 1 for r in rolls)
