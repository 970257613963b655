"""Block-group presets: groups per family, the attention/convolution split, recipes, clear errors."""

import gzip
import json
import re

import pytest
import torch
from search_helpers import DATA, tiny_sd1

from merge_core import Source, layout_for, load_state_dict, merge_to_file
from search.config import ConfigError, SpaceSpec, parse_config
from search.presets import PRESETS, get_preset, is_attention_key
from search.space import SearchSpace

SD1_IN = tuple(f"IN{i:02d}" for i in range(12))
SD1_OUT = tuple(f"OUT{i:02d}" for i in range(12))
XL_IN = tuple(f"IN{i:02d}" for i in range(9))
XL_OUT = tuple(f"OUT{i:02d}" for i in range(9))


def _groups(name, family):
    return get_preset(name).groups(tuple(layout_for(family).blocks))


def test_groups_of_every_preset_for_sd1_and_sdxl():
    assert _groups("in-mid-out", "sd1") == {"IN": SD1_IN, "MID": ("M00",), "OUT": SD1_OUT}
    assert _groups("in-mid-out", "sdxl") == {"IN": XL_IN, "MID": ("M00",), "OUT": XL_OUT}
    assert _groups("depth4", "sd1") == {
        "D0": ("IN00", "IN01", "IN02", "OUT09", "OUT10", "OUT11"),
        "D1": ("IN03", "IN04", "IN05", "OUT06", "OUT07", "OUT08"),
        "D2": ("IN06", "IN07", "IN08", "OUT03", "OUT04", "OUT05"),
        "D3": ("IN09", "IN10", "IN11", "M00", "OUT00", "OUT01", "OUT02")}
    assert _groups("depth4", "sdxl") == {
        "D0": ("IN00", "IN01", "IN02", "OUT06", "OUT07", "OUT08"),
        "D1": ("IN03", "IN04", "IN05", "OUT03", "OUT04", "OUT05"),
        "D2": ("IN06", "IN07", "IN08", "OUT00", "OUT01", "OUT02"),
        "D3": ("M00",)}
    assert len(_groups("blocks", "sd1")) == 25 and len(_groups("blocks", "sdxl")) == 19
    for name in PRESETS:  # every block in exactly one group, for every family
        for family in ("sd1", "sd2", "sdxl"):
            flat = [b for ids in _groups(name, family).values() for b in ids]
            assert sorted(flat) == sorted(layout_for(family).blocks), (name, family)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_attention_keys_are_exactly_the_spatial_transformers(family):
    """Independent rule: a UNet key is attention when its module (input_blocks.i.j, middle_block.j,
    output_blocks.i.j) holds a transformer_blocks key."""
    with gzip.open(DATA / f"keys_{family}.json.gz", "rt") as f:
        keys = [k for k in json.load(f)["keys"] if k.startswith("model.diffusion_model.")]
    module = re.compile(r"^model\.diffusion_model\.((?:input_blocks|output_blocks)\.\d+\.\d+|middle_block\.\d+)\.")
    transformers = {m[1] for k in keys if (m := module.match(k)) and ".transformer_blocks." in k}
    for k in keys:
        m = module.match(k)
        assert is_attention_key(k) == bool(m and m[1] in transformers), k


def test_attn_conv_preset_dimensions_and_recipe(tmp_path, tiny_models):
    models = ("base", "a", "b")
    layout = layout_for("sd1")
    attention = frozenset({"IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *SD1_OUT[3:]})
    spec = SpaceSpec(preset="in-mid-out-attn-conv", default_bounds=(-0.5, 1.5), components={"TE": "search", "VAE": "a"})
    space = SearchSpace.build(spec, models, tuple(layout.blocks), tuple(layout.components), attention_blocks=attention)
    # IN, MID, OUT each split in two, plus TE; VAE held: 7 groups x 2 partners
    assert list(space.groups) == ["IN_attn", "IN_conv", "MID_attn", "MID_conv", "OUT_attn", "OUT_conv", "TE"]
    assert len(space.dimensions()) == 14
    # A group without attention blocks is not split (no dimension that moves nothing)
    only_in = SearchSpace.build(spec, models, tuple(layout.blocks), tuple(layout.components),
                                attention_blocks=frozenset({"IN01"}))
    assert list(only_in.groups) == ["IN_attn", "IN_conv", "MID", "OUT", "TE"]

    params = {d.name: 0.0 for d in space.dimensions()}
    params.update({"IN_attn.a": 0.7, "IN_attn.b": -0.2, "IN_conv.a": 0.1, "IN_conv.b": 0.3})
    sources = tuple(Source.from_path(tiny_models[m], name=m) for m in models)
    recipe = space.recipe(params, family="sd1", sources=sources, dtype="fp32")
    out = merge_to_file(recipe, tmp_path / "merged.safetensors", progress=False)
    merged = load_state_dict(out if not isinstance(out, dict) else tmp_path / "merged.safetensors")
    sd = {m: load_state_dict(tiny_models[m]) for m in models}

    def expect(key, wa, wb):
        return (1 - wa - wb) * sd["base"][key].float() + wa * sd["a"][key].float() + wb * sd["b"][key].float()

    attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    norm = "model.diffusion_model.input_blocks.4.1.norm.weight"
    conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    mid_attn = "model.diffusion_model.middle_block.1.proj_in.weight"
    torch.testing.assert_close(merged[attn], expect(attn, 0.7, -0.2))
    torch.testing.assert_close(merged[norm], expect(norm, 0.7, -0.2))
    torch.testing.assert_close(merged[conv], expect(conv, 0.1, 0.3))
    torch.testing.assert_close(merged[mid_attn], sd["base"][mid_attn].float())  # MID weights 0: the base
    # negative mass counts the attention parts too: IN_attn's -0.2 on 12 blocks, over 27 weight ids + the
    # blocks of the three attention groups (12 + 1 + 12)
    assert space.negative_mass(params) == pytest.approx(0.2 * 12 / (27 + 12 + 1 + 12))


def test_unknown_preset_is_a_config_error_naming_the_closest():
    cfg = {"name": "t", "models": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}],
           "objective": {"vocabulary": "toyworld"}, "budget": {"trials": 3}}
    with pytest.raises(ConfigError) as info:
        parse_config({**cfg, "space": {"preset": "depth-4"}}, source="t.yaml")
    assert "t.yaml: space.preset: unknown preset 'depth-4'; did you mean 'depth4'?" in str(info.value)
    with pytest.raises(ConfigError, match="give `groups` or `preset`"):
        parse_config({**cfg, "space": {"preset": "blocks", "groups": {"A": ["IN00"]}}}, source="t.yaml")
    assert parse_config({**cfg, "space": {"preset": "depth4-attn-conv"}}).space.preset == "depth4-attn-conv"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {n: tiny_sd1(root / f"{n}.safetensors", seed=i) for i, n in enumerate(("base", "a", "b"))}


def test_attn_conv_preset_with_ties_gives_each_part_its_own_method_parameters():
    layout = layout_for("sd1")
    spec = SpaceSpec(preset="depth4-attn-conv", default_bounds=(0.0, 1.2), components={"TE": "a", "VAE": "a"},
                     method={"name": "TIES", "params": {"density": (0.1, 0.9), "lambda": 1.5}})
    space = SearchSpace.build(spec, ("base", "a", "b"), tuple(layout.blocks), tuple(layout.components))
    assert [d.name for d in space.dimensions()][:6] == ["D0_attn.a", "D0_attn.b", "D0_attn.density",
                                                         "D0_conv.a", "D0_conv.b", "D0_conv.density"]
    assert len(space.dimensions()) == 8 * 3  # 4 depth levels x (attn, conv) x (w_a, w_b, density)
    params = {d.name: 0.5 for d in space.dimensions()} | {"D3_attn.a": 0.9, "D3_attn.density": 0.2}
    recipe = space.recipe(params, family="sd1", sources=tuple(
        Source(path=f"/{m}.safetensors") for m in ("base", "a", "b")), seed=1)
    assert recipe.method == "ties"
    attn = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    conv = "model.diffusion_model.middle_block.0.in_layers.2.weight"
    # (w_a, w_b, density, lambda): the attention part of D3 its own, the rest the block's
    assert recipe.key_params(attn, "M00") == pytest.approx((0.9, 0.5, 0.2, 1.5))
    assert recipe.weights["M00"] == pytest.approx((0.5, 0.5, 0.5, 1.5))
    assert recipe.key_params(conv, "M00") in (None, pytest.approx((0.5, 0.5, 0.5, 1.5)))
