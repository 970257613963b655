"""Elemental, include/exclude and Adjust in the Mixer give exactly the streaming merge's tensors."""

import pytest
import torch

from benchmark import Renderer
from benchmark.toyworld import random_checkpoint
from merge_core import Recipe, Source, layout_for, merge_to_file
from merge_core.adjust import parse_adjust
from merge_core.elemental import parse_elemental, parse_selection
from search.mixer import Mixer

SD1 = layout_for("sd1")


@pytest.fixture(scope="module")
def toy_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return tuple(Source.from_path(random_checkpoint(root / f"m{i}.safetensors", seed=i), name=f"m{i}")
                 for i in range(3))


def live_state(renderer):
    return {f"{m}.{k}": v.detach().clone() for m, mod in renderer.modules.items() for k, v in mod.state_dict().items()}


def test_mixer_applies_key_rules_like_the_streaming_merge(toy_sources, tmp_path):
    mixed, reference = Renderer("toyworld"), Renderer("toyworld")
    mixer = Mixer(mixed, [s.path for s in toy_sources])
    plain = Recipe.uniform("sd1", "triple-sum", toy_sources, (0.3, 0.2), dtype="fp32")
    ruled = plain.model_copy(update={
        "elemental": parse_elemental("OUT03-OUT08:attn2:0.9/0.05, NOT IN00-IN11:norm:0.0, M00:attn2.to_k:-0.5", SD1),
        "selection": parse_selection("exclude", "OUT11 : ff.net", SD1),
        "adjust": parse_adjust("3,-2,1,2,5,1,-1,2"),
    })
    ruled = Recipe.model_validate(ruled.model_dump())
    for recipe in (ruled, plain):  # the plain apply after the ruled one must undo every per-key change
        mixer.apply(recipe)
        out = merge_to_file(recipe, tmp_path / f"{len(recipe.elemental)}.safetensors", progress=False)
        reference.load_checkpoint(out)
        got, want = live_state(mixed), live_state(reference)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    changed = live_state(mixed)["unet.conv_out.bias"]
    mixer.apply(ruled)
    assert not torch.equal(changed, live_state(mixed)["unet.conv_out.bias"])  # Adjust did act


def test_mixer_applies_key_rules_to_a_per_tensor_method(toy_sources, tmp_path):
    mixed, reference = Renderer("toyworld"), Renderer("toyworld")
    mixer = Mixer(mixed, [s.path for s in toy_sources[:2]])
    recipe = Recipe.uniform("sd1", "slerp", toy_sources[:2], (0.4,), dtype="fp32").model_copy(update={
        "elemental": parse_elemental("M00:attn:0.9, OUT00-OUT11:norm:0.1", SD1),
        "selection": parse_selection("exclude", "IN01-IN02", SD1),
        "adjust": parse_adjust("-2,1,2,1,-4,2,0,1"),
    })
    recipe = Recipe.model_validate(recipe.model_dump())
    mixer.apply(recipe)
    reference.load_checkpoint(merge_to_file(recipe, tmp_path / "slerp.safetensors", progress=False))
    got, want = live_state(mixed), live_state(reference)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6, msg=k)
