"""`analyze`: per-block cosine / relative difference / task-vector cosine / attention similarity,
checked against numpy computations written independently here."""

import math

import numpy as np
import pytest
import torch

from merge_core import layout_for
from merge_core.analysis import analyze, attention_input, attention_output

U = "model.diffusion_model."
ATT = U + "input_blocks.1.1.transformer_blocks.0.attn2."
KEYS = {
    U + "input_blocks.1.0.in_layers.2.weight": (4, 3, 3, 3),  # IN01
    ATT + "to_q.weight": (6, 6),  # IN01 (cross-attention: q width 6, context width 5)
    ATT + "to_k.weight": (6, 5),
    ATT + "to_v.weight": (6, 5),
    ATT + "to_out.0.weight": (6, 6),
    ATT + "to_out.0.bias": (6,),
    U + "middle_block.0.in_layers.2.weight": (5, 4),  # M00
    U + "middle_block.0.in_layers.2.bias": (5,),
    "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": (3, 2),  # TE
}


def model(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in KEYS.items()}


def flat(sd, block):
    layout = layout_for("sd1")
    return np.concatenate([sd[k].numpy().ravel().astype(np.float64) for k in KEYS if layout.block_of(k) == block])


def np_cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def three():
    base = model(0)
    # two fine-tunes: base + small task vectors
    a = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in base.items()}
    b = {k: v + 0.2 * torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in base.items()}
    return base, a, b


def test_pair_cosine_and_relative_difference_per_block(three):
    base, a, _ = three
    res = analyze([base, a], layout_for("sd1"), names=["base", "a"], attention=False)
    for block in ("IN01", "M00", "TE"):
        x, y = flat(base, block), flat(a, block)
        s = res.pairs[(0, 1)][block]
        assert s.cosine == pytest.approx(np_cos(x, y), rel=1e-12)
        assert s.rel_diff == pytest.approx(np.linalg.norm(x - y) / np.linalg.norm(x), rel=1e-9)
    assert set(res.pairs[(0, 1)]) == {"IN01", "M00", "TE"}  # blocks with no keys are absent, not zero


def test_identical_models_are_cosine_one_and_zero_apart(three):
    base, _, _ = three
    s = analyze([base, dict(base)], layout_for("sd1"), attention=False).pairs[(0, 1)]["M00"]
    assert s.cosine == pytest.approx(1.0) and s.rel_diff == pytest.approx(0.0, abs=1e-12)


def test_task_vectors_against_a_base(three):
    base, a, b = three
    res = analyze([a, base, b], layout_for("sd1"), names=["a", "base", "b"], base=1, attention=False)
    for block in ("IN01", "M00"):
        ta, tb, x = flat(a, block) - flat(base, block), flat(b, block) - flat(base, block), flat(base, block)
        assert res.task[(0, 2)][block] == pytest.approx(np_cos(ta, tb), rel=1e-9)
        assert res.from_base[0][block] == pytest.approx(np.linalg.norm(ta) / np.linalg.norm(x), rel=1e-9)
        assert res.from_base[2][block] == pytest.approx(np.linalg.norm(tb) / np.linalg.norm(x), rel=1e-9)
    # b moved twice as far as a (0.2 vs 0.1 noise), so it is named first among the blocks that moved
    assert res.from_base[2]["M00"] > res.from_base[0]["M00"]
    assert res.most_different()[0] in ("IN01", "M00", "TE")


def np_attention(sd, prefix):
    wq, wk, wv, wo = (sd[prefix + n].numpy().astype(np.float64)
                      for n in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))
    x, c = (t.numpy() for t in attention_input(wq.shape[1], wk.shape[1], cross=True))
    logits = (x @ wq.T) @ (c @ wk.T).T / math.sqrt(wq.shape[0])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ (c @ wv.T) @ wo.T + sd[prefix + "to_out.0.bias"].numpy()


def test_attention_similarity_is_cosine_of_attention_outputs(three):
    base, a, _ = three
    want_a, want_b = np_attention(base, ATT), np_attention(a, ATT)
    np.testing.assert_allclose(attention_output(base, ATT).numpy(), want_a, rtol=1e-10)
    rows = [np_cos(u, v) for u, v in zip(want_a, want_b, strict=True)]
    res = analyze([base, a], layout_for("sd1"))
    assert res.attention[(0, 1)] == {"IN01": pytest.approx(float(np.mean(rows)), rel=1e-10)}
    x1, _ = attention_input(6, 5, cross=True)
    x2, _ = attention_input(6, 5, cross=True)
    assert torch.equal(x1, x2)  # the probe is fixed: same input for every model and every run


def test_mismatched_keys_are_skipped_and_named(three):
    base, a, _ = three
    a = dict(a)
    a[U + "middle_block.0.in_layers.2.bias"] = torch.zeros(7)
    res = analyze([base, a], layout_for("sd1"), attention=False)
    assert res.skipped == [U + "middle_block.0.in_layers.2.bias"]
    with pytest.raises(ValueError, match="at least two"):
        analyze([base], layout_for("sd1"))
