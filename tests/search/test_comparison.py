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


def _rec(number, search, holdout, baseline=None):
    from search.trial_record import TrialRecord

    return TrialRecord(number=number, state="COMPLETE", objective=float(np.mean(search)), baseline=baseline,
                       search=float(np.mean(search)), search_prompts=tuple(search),
                       confirm=float(np.mean(search)), confirm_prompts=tuple(search),
                       holdout=float(np.mean(holdout)), holdout_prompts=tuple(holdout))


def test_the_best_is_compared_with_the_best_parent_and_every_merge_baseline():
    from search.comparison import comparisons, summary_lines

    hold = {"parent:a": [0.2, 0.4, 0.6, 0.4], "uniform": [0.1, 0.3, 0.5, 0.3], "uniform:ties": [0.3, 0.5, 0.7, 0.5],
            None: [0.4, 0.6, 0.8, 0.6]}
    search = {"parent:a": [0.5] * 4, "uniform": [0.4] * 4, "uniform:ties": [0.6] * 4, None: [0.7] * 4}
    recs = [_rec(i, search[label], hold[label], label) for i, label in enumerate(hold)]
    got = [(c.split, c.other, round(c.diff.diff, 6)) for c in comparisons(recs, splits=("holdout",))]
    # hand-computed: the best (trial 3) minus each baseline, prompt by prompt
    assert got == [("holdout", "parent:a", 0.2), ("holdout", "uniform", 0.3), ("holdout", "uniform:ties", 0.1)]
    # when the method's one-click merge is itself the best, it is still compared with the parent
    recs = recs[:3]
    lines = summary_lines(recs)
    assert "the best trial is the baseline uniform:ties: no searched trial beat it" in lines
    others = [c.other for c in comparisons(recs, splits=("holdout",))]
    assert others == ["parent:a", "uniform"]
    # a parent as the best is compared with nothing
    assert comparisons(recs[:1]) == [] and "no merge beat it" in summary_lines(recs[:1])[-1]
