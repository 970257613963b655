import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sd_keysets import tiny_state_dict

from merge_core import CheckpointError, contact_merge, repair_to_file, save_safetensors
from merge_core.contact import effective_rank_error, low_rank


def test_rank_zero_is_a_and_full_rank_is_b():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    assert torch.equal(contact_merge(a, b, 0)[0], a)
    full, residual, _ = contact_merge(a, b, 6)
    assert torch.allclose(full, b, atol=1e-6) and residual == 0.0
    # the SVD path at full rank (forced) reconstructs B too, up to fp32 rounding
    d = (b - a).reshape(6, -1)
    assert torch.allclose(
        low_rank(d, 5, exact=True)[0] + low_rank(d - low_rank(d, 5, exact=True)[0], 1)[0], d, atol=1e-5
    )
    one_d = contact_merge(a[0, 0, 0], b[0, 0, 0], 1)
    assert torch.equal(one_d[0], b[0, 0, 0]) and one_d[1] is None  # 1-D tensors are taken from B


def test_truncation_is_the_best_rank_r_approximation():
    # hand-made: D = 3 e1 f1^T + 1 e2 f2^T; rank 1 keeps only the first term
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    out, residual, _ = contact_merge(a, b, 1)
    assert torch.allclose(out, torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), atol=1e-6)
    assert residual == pytest.approx(1 / 10**0.5)  # ||D - D_1|| / ||D|| = 1 / sqrt(9 + 1)


def test_randomized_svd_error_is_close_to_optimal():
    g = torch.Generator().manual_seed(1)
    # a fine-tune-like difference: a few strong directions plus noise, 1280 x 2880 (a conv viewed as a matrix)
    u, v = torch.randn(1280, 16, generator=g), torch.randn(16, 2880, generator=g)
    d = u @ torch.diag(torch.logspace(1, -1, 16)) @ v / 50 + 0.01 * torch.randn(1280, 2880, generator=g)
    for rank in (4, 8):
        approx, randomized = low_rank(d, rank)
        assert randomized
        err = float(torch.linalg.vector_norm(d - approx) / torch.linalg.vector_norm(d))
        best = effective_rank_error(d, rank)
        assert err <= best * 1.01, (rank, err, best)  # within 1% of the exact truncation


def test_repair_file_round_trip(tmp_path):
    sa, sb = tiny_state_dict("sd1", seed=1), tiny_state_dict("sd1", seed=2)
    pa = save_safetensors(sa, tmp_path / "a.safetensors")
    pb = save_safetensors(sb, tmp_path / "b.safetensors")
    stats = repair_to_file(pa, pb, tmp_path / "r.safetensors", rank=2, progress=False)
    got = load_file(tmp_path / "r.safetensors")
    key = "model.diffusion_model.input_blocks.4.0.in_layers.2.weight"
    expected = contact_merge(sa[key], sb[key], 2)[0].half()
    assert torch.equal(got[key], expected)
    bias = "model.diffusion_model.input_blocks.4.0.in_layers.2.bias"
    assert torch.equal(got[bias], sb[bias])
    pos = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert torch.equal(got[pos], sa[pos])
    meta = json.loads(safe_open(tmp_path / "r.safetensors", "pt").metadata()["mergesearch_repair"])
    assert (
        meta["rank"] == 2 and meta["a"]["path"].endswith("a.safetensors") and len(meta["b"]["sha256"]) == 64
    )
    assert meta["low_rank_keys"] == stats.low_rank_keys > 0 and 0 < meta["residual_mean"] < 1
    full = repair_to_file(pa, pb, tmp_path / "full.safetensors", rank=10**6, progress=False)
    assert full.summary()["residual_max"] == 0.0
    gb = load_file(tmp_path / "full.safetensors")
    assert all(torch.equal(gb[k], sb[k]) for k in sb if not k.endswith("position_ids"))


def test_repair_refuses_mixed_families(tmp_path):
    pa = save_safetensors(tiny_state_dict("sd1", seed=1), tmp_path / "a.safetensors")
    pb = save_safetensors(tiny_state_dict("sdxl", seed=2, max_dim=2), tmp_path / "xl.safetensors")
    with pytest.raises(CheckpointError, match="xl.safetensors: is SDXL but a.safetensors is SD1"):
        repair_to_file(pa, pb, tmp_path / "r.safetensors", progress=False)
    assert not (tmp_path / "r.safetensors").exists()
