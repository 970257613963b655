"""Exact maths of the search space: params <-> coefficients, baselines, stick-breaking."""

import numpy as np
import pytest

from merge_core import Source
from search.config import SpaceSpec
from search.space import SearchSpace

BLOCKS = tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12))
COMPONENTS = ("TE", "VAE")


def make(spec: SpaceSpec, models=("base", "a", "b")) -> SearchSpace:
    return SearchSpace.build(spec, models, BLOCKS, COMPONENTS)


def test_affine_groups_and_coefficients():
    spec = SpaceSpec(groups={"IN": ("IN00-IN11",), "MID": ("M00",), "OUT": ("OUT00-OUT11",)},
                     bounds={"OUT": (-0.3, 1.2)}, components={"TE": "search", "VAE": "base"})
    space = make(spec)
    names = [d.name for d in space.dimensions()]
    assert names == ["IN.a", "IN.b", "MID.a", "MID.b", "OUT.a", "OUT.b", "TE.a", "TE.b"]
    assert [(d.low, d.high) for d in space.dimensions()][4] == (-0.3, 1.2)
    params = {"IN.a": 0.2, "IN.b": 0.3, "MID.a": 0.0, "MID.b": 1.0, "OUT.a": -0.2, "OUT.b": 1.1,
              "TE.a": 0.5, "TE.b": 0.5}
    c = space.coefficients(params)
    assert list(c) == list(BLOCKS) + ["TE", "VAE"]
    assert c["IN05"] == pytest.approx((0.5, 0.2, 0.3))
    assert c["M00"] == pytest.approx((0.0, 0.0, 1.0))
    assert c["OUT11"] == pytest.approx((0.1, -0.2, 1.1))
    assert c["VAE"] == (1.0, 0.0, 0.0)  # held from the base
    assert space.affine_weights(params)["IN05"] == pytest.approx((0.2, 0.3))
    # negative mass: only the 12 OUT blocks carry -0.2, averaged over 27 weight ids
    assert space.negative_mass(params) == pytest.approx(12 * 0.2 / 27)


def test_negative_mass_of_a_task_vector_method_counts_only_the_models_weights():
    """TIES never weights the base: weights summing above 1 are no negative share of it."""
    from search.config import MethodSpec

    groups = {"IN": ("IN00-IN11",), "MID": ("M00",), "OUT": ("OUT00-OUT11",)}
    params = {"IN.a": 0.9, "IN.b": 0.8, "MID.a": 1.1, "MID.b": 1.0, "OUT.a": 0.7, "OUT.b": 0.6,
              "IN.density": 0.2, "MID.density": 0.2, "OUT.density": 0.2}
    ties = make(SpaceSpec(groups=groups, default_bounds=(0.0, 1.2), components={"TE": "base", "VAE": "base"},
                          method=MethodSpec(name="ties", params={"density": (0.05, 1.0)})))
    assert ties.negative_mass(params) == 0.0
    affine = make(SpaceSpec(groups=groups, default_bounds=(0.0, 1.2), components={"TE": "base", "VAE": "base"}))
    # the same weights as affine coefficients: the base gets 1 - sum w < 0 in every block
    expected = (12 * (0.9 + 0.8 - 1) + 1 * (1.1 + 1.0 - 1) + 12 * (0.7 + 0.6 - 1)) / 27
    assert affine.negative_mass(params) == pytest.approx(expected)


def test_blocks_outside_groups_and_bad_names_are_errors():
    with pytest.raises(ValueError, match="in no group"):
        make(SpaceSpec(groups={"IN": ("IN00-IN11",)}))
    with pytest.raises(ValueError, match="unknown block 'IN12'"):
        make(SpaceSpec(groups={"IN": ("IN12",)}))
    with pytest.raises(ValueError, match="already in group"):
        make(SpaceSpec(groups={"A": ("IN00-IN11", "M00", "OUT00-OUT11"), "B": ("M00",)}))
    with pytest.raises(ValueError, match="no group named"):
        make(SpaceSpec(bounds={"NOPE": (0.0, 1.0)}))


@pytest.mark.parametrize("param", ["affine", "simplex"])
def test_baselines_are_parents_and_uniform(param):
    space = make(SpaceSpec(parametrisation=param, components={"TE": "search", "VAE": "search"}))
    labels = [label for label, _ in space.baselines()]
    assert labels == ["parent:base", "parent:a", "parent:b", "uniform"]
    for i, (_, params) in enumerate(space.baselines()):
        want = (1 / 3, 1 / 3, 1 / 3) if i == 3 else tuple(float(j == i) for j in range(3))
        for wid, c in space.coefficients(params).items():
            assert c == pytest.approx(want, abs=1e-12), wid
        for d in space.dimensions():  # baselines are points of the box
            assert d.low <= params[d.name] <= d.high


def test_simplex_is_uniform_dirichlet_under_uniform_params():
    space = make(SpaceSpec(parametrisation="simplex", groups={"ALL": ("IN00-IN11", "M00", "OUT00-OUT11")},
                           components={"TE": "base", "VAE": "base"}), models=("m0", "m1", "m2", "m3"))
    rng = np.random.default_rng(0)
    draws = np.array([space.group_coefficients({f"ALL.u{k}": rng.random() for k in (1, 2, 3)}, "ALL")
                      for _ in range(20000)])
    assert np.allclose(draws.sum(1), 1.0) and (draws >= 0).all()
    # Dirichlet(1,1,1,1): each marginal is Beta(1, 3): mean 1/4, variance 3/80
    assert np.allclose(draws.mean(0), 0.25, atol=0.01)
    assert np.allclose(draws.var(0), 3 / 80, atol=0.004)
    # u/sum(u) would give a marginal variance far below 3/80 (mass crowded at the centre)
    u = rng.random((20000, 4))
    assert (u / u.sum(1, keepdims=True)).var(0).mean() < 0.6 * 3 / 80


def test_ties_space_searches_method_parameters_per_group():
    spec = SpaceSpec(groups={"IN": ("IN00-IN11",), "MID": ("M00",), "OUT": ("OUT00-OUT11",)},
                     default_bounds=(0.0, 1.2), components={"TE": "search", "VAE": "a"},
                     method={"name": "TIES", "params": {"density": (0.1, 0.9), "lambda": 1.5}})
    space = make(spec)
    names = [d.name for d in space.dimensions()]
    assert names == ["IN.a", "IN.b", "IN.density", "MID.a", "MID.b", "MID.density", "OUT.a", "OUT.b",
                     "OUT.density", "TE.a", "TE.b", "TE.density"]
    params = {n: 0.5 for n in names} | {"OUT.density": 0.25, "OUT.b": 1.0}
    recipe = space.recipe(params, family="sd1", sources=tuple(
        Source(path=f"/{m}.safetensors") for m in ("base", "a", "b")), seed=9)
    assert recipe.method == "ties" and recipe.seed is None  # TIES is not random: no seed stored
    assert recipe.weights["IN03"] == pytest.approx((0.5, 0.5, 0.5, 1.5))  # w_a, w_b, density, lambda
    assert recipe.weights["OUT07"] == pytest.approx((0.5, 1.0, 0.25, 1.5))
    # the VAE is held from model a: one-hot weights and TIES' identity (density 1, lambda 1)
    assert recipe.weights["VAE"] == pytest.approx((1.0, 0.0, 1.0, 1.0))
    # baselines are the plain linear merges, whatever the method
    label, bparams = space.baselines()[1]
    assert label == "parent:a" and bparams["IN.density"] == 0.9  # identity 1 clipped into the bounds
    base_recipe = space.recipe(bparams, family="sd1", sources=recipe.sources, baseline=label)
    assert base_recipe.method == "affine" and base_recipe.coefficients()["M00"] == pytest.approx((0, 1, 0))


def test_method_spec_errors_name_the_fix():
    with pytest.raises(ValueError, match="slerp is not a method over a base and n models"):
        SpaceSpec(method={"name": "slerp"})
    with pytest.raises(ValueError, match="did you mean 'density'"):
        SpaceSpec(method={"name": "ties", "params": {"densty": 0.2}})
    with pytest.raises(ValueError, match=r"outside its range \[0, 1\]"):
        SpaceSpec(method={"name": "ties", "params": {"density": (0.1, 1.5)}})
    with pytest.raises(ValueError, match="takes model weights >= 0"):
        SpaceSpec(default_bounds=(-0.3, 1.2), method={"name": "ties"})
    dare = make(SpaceSpec(default_bounds=(0.0, 1.0), method={"name": "dare", "params": {"drop": (0.1, 0.9)}}))
    params = {d.name: 0.5 for d in dare.dimensions()}
    src = tuple(Source(path=f"/{m}.safetensors") for m in ("base", "a", "b"))
    assert dare.recipe(params, family="sd1", sources=src, seed=12).seed == 12  # random: per-trial seed kept


def test_elemental_groups_are_extra_dimensions_over_their_blocks(tmp_path):
    """`space.elemental` adds a group whose weights apply only to the keys of its blocks holding one of its
    substrings; the streaming merge gives those keys the group's coefficients and the rest their block's."""
    from search_helpers import tiny_sd1

    from merge_core import load_state_dict, merge_to_file

    spec = SpaceSpec(groups={"IN": ("IN00-IN11",), "MID": ("M00",), "OUT": ("OUT00-OUT11",)},
                     components={"TE": "base", "VAE": "base"}, elemental={"OUT_x": "OUT03-OUT06:attn2"})
    space = make(spec)
    assert [d.name for d in space.dimensions()][-2:] == ["OUT_x.a", "OUT_x.b"]
    paths = [tiny_sd1(tmp_path / f"{m}.safetensors", seed=i) for i, m in enumerate(("base", "a", "b"))]
    sources = tuple(Source(path=str(p), name=m) for p, m in zip(paths, ("base", "a", "b"), strict=True))
    params = {"IN.a": 0.1, "IN.b": 0.2, "MID.a": 0.3, "MID.b": 0.1, "OUT.a": 0.2, "OUT.b": 0.3,
              "OUT_x.a": 0.9, "OUT_x.b": -0.2}
    recipe = space.recipe(params, family="sd1", sources=sources)
    merged = load_state_dict(merge_to_file(recipe.model_copy(update={"dtype": "fp32"}), tmp_path / "m.safetensors",
                                           progress=False))
    src = [load_state_dict(p) for p in paths]
    attn2 = [k for k in merged if ".output_blocks.4." in k and "attn2" in k and k.endswith("weight")]
    other = [k for k in merged if ".output_blocks.4." in k and "attn2" not in k and k.endswith("weight")]
    outside = [k for k in merged if ".output_blocks.8." in k and "attn2" in k and k.endswith("weight")]
    assert attn2 and other and outside
    for keys, (ca, cb) in ((attn2, (0.9, -0.2)), (other, (0.2, 0.3)), (outside, (0.2, 0.3))):
        for k in keys:  # independent per-key computation: base(1 - a - b) + a A + b B
            want = (1 - ca - cb) * src[0][k].double() + ca * src[1][k].double() + cb * src[2][k].double()
            np.testing.assert_allclose(merged[k].double().numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="space.elemental.bad: write 'BLOCKS:ELEMENTS'"):
        make(SpaceSpec(elemental={"bad": "OUT03"}))
    with pytest.raises(ValueError, match="unknown block 'OUT33'"):
        make(SpaceSpec(elemental={"bad": "OUT33:attn2"}))


def test_a_method_space_adds_the_methods_one_click_merge_as_a_baseline():
    """`uniform:ties`: every specialist at weight 1 and TIES' defaults (density 0.2, lambda 1, mergekit's
    and the paper's), clipped into the searched bounds, built with TIES itself (not the linear merge)."""
    spec = SpaceSpec(groups={"IN": ("IN00-IN11",), "MID": ("M00",), "OUT": ("OUT00-OUT11",)},
                     default_bounds=(0.0, 1.2), components={"TE": "search", "VAE": "base"},
                     method={"name": "ties", "params": {"density": (0.3, 1.0), "lambda": (0.5, 2.0)}})
    space = make(spec)
    labels = [label for label, _ in space.baselines()]
    assert labels == ["parent:base", "parent:a", "parent:b", "uniform", "uniform:ties"]
    params = dict(space.baselines())["uniform:ties"]
    assert params["IN.a"] == params["TE.b"] == params["OUT.b"] == 1.0  # (affine bounds always hold 0 and 1)
    assert params["IN.density"] == 0.3 and params["OUT.lambda"] == 1.0  # 0.2 clipped up; 1 inside [0.5, 2]
    for d in space.dimensions():
        assert d.low <= params[d.name] <= d.high
    sources = tuple(Source(path=f"/{m}.safetensors") for m in ("base", "a", "b"))
    recipe = space.recipe(params, family="sd1", sources=sources, baseline="uniform:ties")
    assert recipe.method == "ties"
    assert recipe.weights["OUT05"] == pytest.approx((1.0, 1.0, 0.3, 1.0))  # w_a, w_b, density, lambda
    assert recipe.weights["VAE"] == pytest.approx((0.0, 0.0, 1.0, 1.0))  # held from the base
    linear = space.recipe(dict(space.baselines())["uniform"], family="sd1", sources=sources, baseline="uniform")
    assert linear.method == "affine"
    # the affine search has no such baseline: its uniform merge is its one-click merge
    assert [label for label, _ in make(SpaceSpec()).baselines()][-1] == "uniform"
