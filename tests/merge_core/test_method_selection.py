"""The fast paths inside TIES and DARE against independent references on tensors big enough to use them:
the bracketed k-th largest value (TIES' trim threshold) against a full numpy sort, and the numpy
form of DARE's counter-based uniforms against the hash computed with Python integers and against
the torch form other devices use."""

import numpy as np
import pytest
import torch

from merge_core.methods.hashed_uniform import hashed_uniform, lowbias32
from merge_core.methods.task_vectors import kth_largest, kth_largest_magnitude, trim_top_k


def tensors():
    g = np.random.default_rng(0)
    n = 300_001
    yield "normal", g.standard_normal(n).astype(np.float32)
    yield "ties", g.integers(0, 50, n).astype(np.float32)  # many equal values at every rank
    yield "sorted", np.sort(g.standard_normal(n)).astype(np.float32)  # a strided sample is unlike the tensor
    yield "rows", (g.standard_normal((301, 1000)) * np.logspace(-3, 1, 301)[:, None]).astype(np.float32).ravel()
    yield "constant", np.full(70_000, 0.25, np.float32)
    yield "small", g.standard_normal(20_000).astype(np.float32)  # a sample of a quarter of the tensor
    nan = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    nan[::7] = np.nan  # NaN sorts above every number (np.sort, torch.kthvalue); n // 3 lands in the bracket
    yield "nan", nan


@pytest.mark.parametrize("name,values", list(tensors()), ids=[n for n, _ in tensors()])
def test_kth_largest_equals_a_full_sort(name, values):
    n = values.size
    ranked = np.sort(values)[::-1]
    t = torch.from_numpy(values)
    for k in (1, 2, 17, n // 100, n // 5, n // 3, n // 2, n - 3, n):
        assert np.array_equal(kth_largest(t, k), ranked[k - 1], equal_nan=True), (name, k)
    with pytest.raises(ValueError):
        kth_largest(t, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name,values", list(tensors()), ids=[n for n, _ in tensors()])
def test_kth_largest_magnitude_equals_a_full_sort_of_the_fp32_task_vector(name, values, dtype):
    """TIES' threshold, computed piece by piece from the two sources, against numpy's sort of |m - b|."""
    g = np.random.default_rng(4)
    model = torch.from_numpy(values).to(dtype)
    base = torch.from_numpy(g.standard_normal(values.size).astype(np.float32) * 0.1).to(dtype)
    mags = np.abs(model.float().numpy() - base.float().numpy())  # fp32 difference of the exact upcasts
    ranked = np.sort(mags)[::-1]
    n = values.size
    for k in (1, 17, n // 100, n // 5, n // 3, n // 2, n):
        assert np.array_equal(kth_largest_magnitude(model, base, k), ranked[k - 1], equal_nan=True), (name, dtype, k)
    with pytest.raises(ValueError):
        kth_largest_magnitude(model, base, n + 1)


def test_trim_top_k_on_a_large_tensor_keeps_the_largest_magnitudes():
    g = np.random.default_rng(1)
    tau = g.standard_normal((512, 640)).astype(np.float32)
    for density in (0.01, 0.2, 0.9):
        k = int(np.ceil(density * tau.size - 1e-9))
        thr = np.sort(np.abs(tau).ravel())[tau.size - k]
        want = np.where(np.abs(tau) >= thr, tau, 0)
        assert np.array_equal(trim_top_k(torch.from_numpy(tau), density).numpy(), want)


def py_uniform(stream, offset, n):
    """The hash with Python integers (masking every product to 32 bits), independent of both forms."""
    out = []
    for j in range(n):
        x = (stream + offset + j) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        x ^= x >> 16
        out.append((x >> 8) / 2**24)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("stream,offset", [(0, 0), (12345, 7), (0xFFFFFFF0, 3), (5, 2**32 - 40), (2**31, 2**33)])
def test_hashed_uniform_on_cpu_equals_the_hash_and_the_torch_form(stream, offset):
    got = hashed_uniform(stream, offset, 100_000)
    assert got.dtype == torch.float32 and got.shape == (100_000,)
    assert np.array_equal(got[:300].numpy(), py_uniform(stream, offset, 300))
    idx = torch.arange(offset, offset + 100_000, dtype=torch.int64)
    torch_form = (lowbias32((idx + stream) & 0xFFFFFFFF) >> 8).to(torch.float32) * (1.0 / (1 << 24))
    assert torch.equal(got, torch_form)


def test_ties_on_a_key_larger_than_one_chunk_equals_numpy():
    """TIES' elementwise part runs in chunks with whole-tensor thresholds: compare with a numpy TIES."""
    from merge_core.methods import KeyContext, get_method

    g = np.random.default_rng(2)
    shape = (700, 1000)  # 700k elements: three chunks of 2^18
    base, m1, m2, m3 = (g.standard_normal(shape).astype(np.float32) for _ in range(4))
    w, density, lam = (0.7, 0.4, 1.0), 0.2, 1.3
    deltas = []
    for m, wi in zip((m1, m2, m3), w, strict=True):
        tau = m - base
        k = int(np.ceil(density * tau.size - 1e-9))
        thr = np.sort(np.abs(tau).ravel())[tau.size - k]
        deltas.append(np.float32(wi) * np.where(np.abs(tau) >= thr, tau, 0))
    sign = np.sign(deltas[0] + deltas[1] + deltas[2])
    agree = [(np.sign(d) == sign) & (d != 0) for d in deltas]
    num = sum(np.where(a, d, 0) for a, d in zip(agree, deltas, strict=True))
    den = sum(a * wi for a, wi in zip(agree, w, strict=True))
    want = base + lam * np.where(den > 0, num / np.where(den > 0, den, 1), 0)
    ts = [torch.from_numpy(t) for t in (base, m1, m2, m3)]
    got = get_method("ties").apply(ts, (*w, density, lam), KeyContext("k", shape))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    # a transposed (non-contiguous) view of the sources gives the transposed result
    got_t = get_method("ties").apply([t.T for t in ts], (*w, density, lam), KeyContext("k", shape[::-1]))
    assert torch.equal(got_t, got.T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn])
def test_ties_on_sources_in_their_stored_dtype_equals_ties_on_fp32_copies(dtype):
    """The file merger hands TIES its sources as stored (no fp32 copy of each); the result must be
    the one of the fp32 contract, bit for bit."""
    from merge_core.methods import KeyContext, get_method

    g = torch.Generator().manual_seed(3)
    ts = [(torch.randn(600, 900, generator=g) * 0.5).to(dtype) for _ in range(3)]
    vector, ctx = (0.8, 0.6, 0.3, 1.2), KeyContext("k", (600, 900))
    stored = get_method("ties").apply(ts, vector, ctx)
    upcast = get_method("ties").apply([t.float() for t in ts], vector, ctx)
    assert stored.dtype == torch.float32 and torch.equal(stored, upcast)
