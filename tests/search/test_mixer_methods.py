"""Both engines agree for every registered method: the Mixer's live weights equal the streaming
merger's file of the same recipe, bit for bit in fp32 on CPU (DARE: the same masks)."""

import math

import pytest
import torch

from benchmark import Renderer
from benchmark.toyworld import random_checkpoint
from merge_core import METHODS, Recipe, Source, layout_for, merge_to_file
from search.mixer import Mixer


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return tuple(Source.from_path(random_checkpoint(root / f"m{i}.safetensors", seed=10 + i), name=f"m{i}")
                 for i in range(3))


def random_recipe(method, sources, seed):
    g = torch.Generator().manual_seed(seed)
    n = 3 if method.n_sources is None else method.n_sources
    weights = {}
    for wid in layout_for("sd1").weight_ids:
        vec = [float(torch.rand((), generator=g)) for _ in range(n - 1)] if method.model_weights else []
        for p in method.params:
            lo, hi = (p.low, p.high) if math.isfinite(p.low) and math.isfinite(p.high) else (-0.3, 1.2)
            vec.append(lo + (hi - lo) * float(torch.rand((), generator=g)))
        weights[wid] = tuple(vec)
    return Recipe(family="sd1", method=method.name, sources=sources[:n], weights=weights, dtype="fp32",
                  seed=123 if method.random else None)


def live_state(renderer):
    return {f"{m}.{k}": v.detach().clone() for m, mod in renderer.modules.items() for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_mixer_equals_streaming_merge(name, sources, tmp_path):
    method = METHODS[name]
    recipe = random_recipe(method, sources, seed=len(name))
    mixed = Renderer("toyworld")
    mixer = Mixer(mixed, [s.path for s in recipe.sources])
    mixer.apply(random_recipe(METHODS["affine"] if method.model_weights else method, sources, 99)
                if method.n_sources in (None, 3) else recipe)  # a first apply must leave nothing behind
    mixer.apply(recipe)
    reference = Renderer("toyworld")
    reference.load_checkpoint(merge_to_file(recipe, tmp_path / "merged.safetensors", progress=False))
    got, want = live_state(mixed), live_state(reference)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    # and the merge really did something for every method (not a copy of source 0)
    base = Renderer("toyworld")
    base.load_checkpoint(recipe.sources[0].path)
    unchanged = live_state(base)
    assert any(not torch.equal(got[k], unchanged[k]) for k in got if k.startswith("unet."))
