import json

import pytest
from pydantic import ValidationError

from merge_core import Family, Recipe, Source, layout_for


def sources(n):
    return tuple(Source(path=f"/models/{c}.safetensors", sha256=c * 64) for c in "abc"[:n])


def test_json_round_trip_and_coefficients(tmp_path):
    r = Recipe.uniform("sd1", "weighted-sum", sources(2), (0.3,), te=(0.0,), vae=(1.0,), dtype="bf16")
    again = Recipe.from_json(r.to_json())
    assert again == r
    r.save(tmp_path / "r.json")
    assert Recipe.load(tmp_path / "r.json") == r
    co = r.coefficients()
    assert list(co) == list(layout_for("sd1").weight_ids)
    assert co["IN05"] == pytest.approx((0.7, 0.3))
    assert co["TE"] == (1.0, 0.0) and co["VAE"] == (0.0, 1.0)
    assert r.sources[0].name == "a"
    assert json.loads(r.to_json())["family"] == "sd1"


def test_affine_over_four_models():
    srcs = (*sources(3), Source(path="/m/d.safetensors"))
    r = Recipe.uniform(Family.SDXL, "affine", srcs, (0.5, -0.2, 0.1))
    assert r.coefficients()["M00"] == pytest.approx((0.6, 0.5, -0.2, 0.1))
    assert len(r.weights) == 21


def test_a1111_method_names_are_accepted():
    assert Recipe.uniform("sd1", "Add difference", sources(3), (0.5,)).method == "add-difference"


def test_bad_recipes_say_what_is_wrong():
    good = Recipe.uniform("sd1", "weighted-sum", sources(2), (0.3,))
    weights = dict(good.weights)
    del weights["OUT11"]
    with pytest.raises(ValidationError, match="missing OUT11"):
        Recipe(family="sd1", method="weighted-sum", sources=sources(2), weights=weights)
    with pytest.raises(ValidationError, match="takes 2 value"):
        Recipe.uniform("sd1", "triple-sum", sources(3), (0.3,))
    with pytest.raises(ValidationError, match="merges 3 model"):
        Recipe.uniform("sd1", "add-difference", sources(2), (0.3,))
    with pytest.raises(ValidationError, match="unknown merge method"):
        Recipe.uniform("sd1", "slerp-ish", sources(2), (0.3,))
    with pytest.raises(ValidationError, match="not a finite number"):
        Recipe.uniform("sd1", "weighted-sum", sources(2), (float("nan"),))
    with pytest.raises(ValidationError):
        good.model_copy().__setattr__("dtype", "fp32")  # frozen
