import pytest
import torch

from merge_core import METHODS, get_method

A = torch.tensor([1.0, 2.0, -4.0])
B = torch.tensor([3.0, 0.0, 4.0])
C = torch.tensor([0.5, 1.0, 2.0])


def combine(method, params, *tensors):
    coeffs = get_method(method).coefficients(params, len(tensors))
    return sum(c * t for c, t in zip(coeffs, tensors, strict=True))


def test_weighted_sum_by_hand():
    # (1-0.25)A + 0.25B
    assert torch.equal(combine("weighted-sum", (0.25,), A, B), torch.tensor([1.5, 1.5, -2.0]))
    assert torch.equal(combine("weighted-sum", (0.0,), A, B), A)  # alpha=0 is model A
    assert torch.equal(combine("weighted-sum", (1.0,), A, B), B)


def test_add_difference_by_hand():
    # A + 0.5(B - C) = [1+1.25, 2-0.5, -4+1]
    assert torch.equal(combine("add-difference", (0.5,), A, B, C), torch.tensor([2.25, 1.5, -3.0]))


def test_triple_sum_by_hand():
    # 0.5A + 0.25B + 0.25C
    assert torch.equal(combine("triple-sum", (0.25, 0.25), A, B, C), torch.tensor([1.375, 1.25, -0.5]))


def test_sum_twice_by_hand():
    # (1-0.5)((1-0.5)A + 0.5B) + 0.5C = 0.25A + 0.25B + 0.5C
    assert torch.equal(combine("sum-twice", (0.5, 0.5), A, B, C), torch.tensor([1.25, 1.0, 1.0]))
    assert get_method("sum-twice").coefficients((0.2, 0.4), 3) == pytest.approx((0.48, 0.12, 0.4))


def test_affine_by_hand():
    # base(1 - 0.5 + 0.25) + 0.5B - 0.25C: negative weights and sums past 1 are allowed
    out = combine("affine", (0.5, -0.25), A, B, C)
    assert torch.allclose(out, 0.75 * A + 0.5 * B - 0.25 * C)
    assert torch.equal(out, torch.tensor([2.125, 1.25, -1.5]))
    assert get_method("affine").coefficients((0.3,), 2) == pytest.approx((0.7, 0.3))


def test_every_linear_method_is_affine():
    linear = [m for m in METHODS.values() if m.linear]
    assert {m.name for m in linear} == {"weighted-sum", "add-difference", "triple-sum", "sum-twice", "affine"}
    for method in linear:
        n = method.n_sources or 4
        params = [0.1 * (i + 1) for i in range(method.n_params(n))]
        # coefficients sum to 1, so merging n copies of one model gives that model back
        assert sum(method.coefficients(params, n)) == pytest.approx(1.0)


def test_names_and_errors():
    assert get_method("Weighted sum").name == "weighted-sum"
    assert get_method("add_difference").name == "add-difference"
    with pytest.raises(ValueError, match="did you mean 'triple-sum'"):
        get_method("tripple-sum")
    with pytest.raises(ValueError, match="merges 3 model"):
        get_method("add-difference").coefficients((0.5,), 2)
    with pytest.raises(ValueError, match="takes 2 value"):
        get_method("triple-sum").coefficients((0.5,), 3)
