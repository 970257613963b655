"""Paired comparisons: the bootstrap interval against the normal approximation, and the wording."""

import math

import numpy as np
import pytest

from search.comparison import PairedDiff, paired_bootstrap, verdict


def test_paired_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    a = rng.normal(0.6, 0.2, 400)
    b = a - 0.03 + rng.normal(0, 0.1, 400)  # paired: b tracks a, differs by 0.03 on average
    d = a - b
    got = paired_bootstrap(a, b, seed=1)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)  # independent: the CLT interval of the mean difference
    assert got.diff == pytest.approx(d.mean())
    assert got.low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert got.high == pytest.approx(d.mean() + half, abs=0.15 * half)
    # pairing matters: the unpaired spread of a and b is far wider than the paired one
    assert got.high - got.low < 0.5 * 2 * 1.96 * math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)


def test_degenerate_and_bad_inputs():
    assert paired_bootstrap([1, 1, 1], [0.5, 0.5, 0.5]) == PairedDiff(0.5, 0.5, 0.5, 3)
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="two prompts"):
        paired_bootstrap([1], [1])


def test_wording_follows_the_interval():
    assert verdict(PairedDiff(0.04, 0.01, 0.07, 64), "parent:backdrop") == \
        "beats parent:backdrop by +0.040 [+0.010, +0.070]"
    assert verdict(PairedDiff(0.01, -0.02, 0.04, 64), "parent:backdrop") == \
        "not distinguishable from parent:backdrop (+0.010 [-0.020, +0.040])"
    assert verdict(PairedDiff(-0.05, -0.08, -0.01, 64), "uniform") == "is worse than uniform by -0.050 [-0.080, -0.010]"
