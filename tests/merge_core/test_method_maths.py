"""Every registered method against hand-computed values on tiny tensors, and TIES, DARE and SLERP
against independent numpy implementations on the full SD1 key layout (small random tensors)."""

import hashlib
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sd_keysets import tiny_state_dict

from merge_core import Recipe, Source, layout_for, load_state_dict, merge_to_file, save_safetensors
from merge_core.merge import method_chunks
from merge_core.methods import METHODS, KeyContext, get_method


def run(name, tensors, vector, key="model.diffusion_model.input_blocks.1.0.emb_layers.1.weight", state=None,
        seed=None):
    ts = [torch.tensor(t, dtype=torch.float32) for t in tensors]
    return get_method(name).apply(ts, vector, KeyContext(key, tuple(ts[0].shape), 0, seed, state))


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)


# ---- hand-computed ------------------------------------------------------------------------------
def test_ties_by_hand():
    base, m1, m2 = [0, 0, 0, 0], [1, -2, 3, 0.5], [-3, 1, 1, 0.1]
    # density 0.5 keeps 2 of 4: tau1 -> [0,-2,3,0]; tau2 keeps |x| >= 1 (a tie at the threshold keeps both 1s)
    # -> [-3,1,1,0]; sign of the sum [-3,-1,4,0] = [-,-,+,0]; disjoint mean [-3/1, -2/1, (3+1)/2, 0]
    close(run("ties", [base, m1, m2], (1, 1, 0.5, 1)), [-3, -2, 2, 0])
    close(run("ties", [base, m1, m2], (1, 1, 0.5, 0.5)), [-1.5, -1, 1, 0])  # lambda scales the merged vector
    # weights 1 and 0.5: deltas [0,-2,3,0] and [-1.5,.5,.5,0]; elem 2 = (3 + 0.5) / (1 + 0.5)
    close(run("ties", [base, m1, m2], (1, 0.5, 0.5, 1)), [-3, -2, 7 / 3, 0])
    # density 1 and one model at weight 1 gives that model back
    close(run("ties", [base, m1, m2], (1, 0, 1, 1)), m1)


def test_dare_by_hand():
    # p = 0 drops nothing: plain task arithmetic base + lambda * sum w_i tau_i
    close(run("dare", [[1, 1], [3, 5], [0, 1]], (1, 2, 0, 0.5), seed=0), [1 + 0.5 * (2 - 2), 1 + 0.5 * (4 + 0)])
    # p = 0.99 keeps about 1 % of the elements, each scaled by 100
    out = run("dare", [np.zeros(10_000), np.ones(10_000)], (1, 0.99, 1), seed=3)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.tensor(100.0)) and 60 < kept.numel() < 140


def test_slerp_by_hand():
    close(run("slerp", [[1, 0], [0, 1]], (0.5,)), [math.sqrt(0.5), math.sqrt(0.5)])
    close(run("slerp", [[1, 0], [0, 1]], (1 / 3,)), [math.sin(math.pi / 3), math.sin(math.pi / 6)])
    close(run("slerp", [[1, 2], [2, 4]], (0.5,)), [1.5, 3])  # parallel: linear fallback


def test_train_difference_by_hand():
    # d = B-C = [2,0]; |B-A| = [1,1]; new = d*|B-A|/(|d|+|B-A|) = [2/3, 0]; A + 1.8 * new
    close(run("train-difference", [[1, 0], [2, 1], [0, 1]], (1,)), [1 + 1.8 * 2 / 3, 0])
    close(run("train-difference", [[1, 0], [1, 1], [1, 1]], (1,)), [1, 0])  # B == C: A unchanged


def test_smooth_add_by_hand():
    # a constant difference passes both filters unchanged
    a = np.arange(9, dtype=np.float32).reshape(3, 3)
    close(run("smooth-add", [a, np.full((3, 3), 2.5), np.full((3, 3), 2.0)], (2,)), a + 1.0)
    # an isolated spike is removed by the 3x3 median filter before the Gaussian
    spike = np.zeros((5, 5), np.float32)
    spike[2, 2] = 100
    close(run("smooth-add", [np.zeros((5, 5)), spike, np.zeros((5, 5))], (1,)), np.zeros((5, 5)))


def test_extract_by_hand():
    a, b, c = [[0, 0]], [[1, 0]], [[0, 1]]  # B-A and C-A are orthogonal: cos 0, d = (1/2)^gamma
    close(run("extract", [a, b, c], (0.5, 0, 1)), [[0.25, 0.25]])  # lerp(B-A, C-A, .5) * d, d = 0.5
    close(run("extract", [a, b, c], (0.5, 1, 2)), [[0.375, 0.375]])  # beta 1: (1 - d), d = 0.25


def test_tensor_modes_by_hand():
    a, b = np.zeros((4, 1)), np.ones((4, 1))
    close(run("tensor", [a, b], (0.5, 0.25)), [[0], [1], [1], [0]])  # B's rows [1, 3)
    close(run("tensor", [a, b], (0.5, 0.75)), [[1], [0], [0], [1]])  # cyclic window: A's rows [1, 3)
    # tensor2: along dim 1; shape[1] = 4 <= 100 so the bounds come from shape[0] = 2: columns [0, 1)
    close(run("tensor2", [np.zeros((2, 4)), np.ones((2, 4))], (0.5, 0)), [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_self_by_hand():
    close(run("self", [[2, 4]], (0.5,)), [1, 2])
    close(run("self", [[2, 4]], (0.5,), key="model.diffusion_model.out.0.norm.weight"), [2, 4])  # norm kept
    close(run("self", [[2, 4]], (0.0,)), [2, 4])  # alpha 0 leaves A as it is


def test_cosine_b_by_hand():
    # columns: (1,0)·(1,0) -> 1; (0,1)·(1,1) -> 1/sqrt2; whole tensor 2/sqrt6; comb = (column + whole)/2
    comb1 = (1 / math.sqrt(2) + 2 / math.sqrt(6)) / 2
    out = run("cosine-b", [[[1, 0], [0, 1]], [[1, 1], [0, 1]]], (0.0,), state=(0.0, 1.0))
    close(out, [[1, (1 - comb1) * 1 + comb1 * 0], [0, 1]])  # (1-k)B + kA per column, k = comb here
    # alpha shifts k down: alpha >= 1 gives pure B
    close(run("cosine-b", [[[1, 0], [0, 1]], [[1, 1], [0, 1]]], (1.0,), state=(0.0, 1.0)), [[1, 1], [0, 1]])


def test_cosine_a_by_hand():
    # cosineA normalises columns first: the whole-tensor cosine is then the columns' mean
    comb1 = (1 / math.sqrt(2) + (1 + 1 / math.sqrt(2)) / 2) / 2
    out = run("cosine-a", [[[1, 0], [0, 1]], [[1, 1], [0, 1]]], (-0.0,), state=(0.0, 1.0))
    close(out, [[1, 1 - comb1], [0, 1]])


def test_linear_forms_through_apply():
    close(run("affine", [[1, 2], [3, 4], [5, 6]], (0.5, -0.25)), [0.75 * 1 + 1.5 - 1.25, 0.75 * 2 + 2 - 1.5])
    close(run("sum-twice", [[1.0], [2.0], [4.0]], (0.5, 0.5)), [0.5 * 1.5 + 2])


# ---- chunked = whole --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].elementwise and not METHODS[m].linear])
def test_elementwise_methods_give_the_same_result_chunk_by_chunk(name):
    method = METHODS[name]
    g = torch.Generator().manual_seed(0)
    n = 3 if method.n_sources is None else method.n_sources
    ts = [torch.randn(5, 13, generator=g) for _ in range(n)]
    vector = ([0.7] * (n - 1) if method.model_weights else []) + [p.default for p in method.params]
    ctx = KeyContext("model.diffusion_model.input_blocks.1.0.emb_layers.1.weight", (5, 13), 0, 42, None)
    whole = method.apply(ts, vector, ctx).reshape(-1)
    chunked = torch.cat(list(method_chunks(method, ts, tuple(vector), ctx, chunk=7)))
    assert torch.equal(whole, chunked)


# ---- independent numpy implementations on the SD1 key layout ----------------------------------
def np_lowbias32(x):
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def np_uniform(seed, key, index, n):
    stream = int.from_bytes(hashlib.blake2b(f"{seed}\0{key}\0{index}".encode(), digest_size=4).digest(), "little")
    x = np_lowbias32((np.arange(n, dtype=np.uint64) + stream) % 2**32)
    return (x >> np.uint32(8)).astype(np.float32) / np.float32(2**24)


def np_ties(base, models, w, density, lam):
    deltas = []
    for m, wi in zip(models, w, strict=True):
        tau = m - base
        k = math.ceil(density * tau.size - 1e-9)
        if k < tau.size:
            thr = np.sort(np.abs(tau).ravel())[tau.size - k]
            tau = np.where(np.abs(tau) >= thr, tau, 0)
        deltas.append(np.float32(wi) * tau)
    sign = np.sign(sum(deltas))
    num = sum(np.where((np.sign(d) == sign) & (d != 0), d, 0) for d in deltas)
    den = sum(((np.sign(d) == sign) & (d != 0)) * wi for d, wi in zip(deltas, w, strict=True))
    return base + lam * np.where(den > 0, num / np.where(den > 0, den, 1), 0)


def np_dare(base, models, w, p, lam, seed, key):
    out = base.astype(np.float64)
    for i, (m, wi) in enumerate(zip(models, w, strict=True), start=1):
        keep = np_uniform(seed, key, i, m.size).reshape(m.shape) >= p
        out = out + wi * lam * np.where(keep, (m - base) / (1 - p), 0)
    return out


def np_slerp(a, b, t):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    if abs(cos) > 0.9995:
        out = (1 - t) * a + t * b
    else:
        om = math.acos(cos)
        out = math.sin((1 - t) * om) / math.sin(om) * a + math.sin(t * om) / math.sin(om) * b
    return out


@pytest.fixture(scope="module")
def sd1_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    out = []
    for i in range(3):
        path = root / f"m{i}.safetensors"
        save_safetensors(tiny_state_dict("sd1", seed=i, max_dim=12, dtype=torch.float32), path)
        out.append(Source.from_path(path, name=f"m{i}"))
    return tuple(out)


def per_block(method, seed):
    g = np.random.default_rng(seed)
    out = {}
    for wid in layout_for("sd1").weight_ids:
        if method == "slerp":
            out[wid] = (float(g.uniform(0, 1)),)
        elif method == "ties":
            out[wid] = (float(g.uniform(0, 1)), float(g.uniform(0, 1)), float(g.uniform(0.05, 1)), float(g.uniform(0.5, 2)))
        else:
            out[wid] = (float(g.uniform(-0.5, 1)), float(g.uniform(-0.5, 1)), float(g.uniform(0, 0.9)), float(g.uniform(0.5, 2)))
    return out


@pytest.mark.parametrize("name", ["ties", "dare", "slerp"])
def test_against_numpy_on_the_sd1_layout(name, sd1_sources, tmp_path):
    sources = sd1_sources[:2] if name == "slerp" else sd1_sources
    recipe = Recipe(family="sd1", method=name, sources=sources, weights=per_block(name, 1), dtype="fp32",
                    seed=5 if name == "dare" else None)
    merged = load_state_dict(merge_to_file(recipe, tmp_path / "m.safetensors", progress=False))
    srcs = [{k: v.numpy() for k, v in load_state_dict(s.path).items()} for s in sources]
    layout = layout_for("sd1")
    checked = 0
    for key, got in merged.items():
        block = layout.block_of(key)
        if block is None or not got.is_floating_point():
            continue
        v = recipe.weights[block]
        ts = [s[key].astype(np.float32) for s in srcs]
        if name == "ties":
            want = np_ties(ts[0], ts[1:], v[:2], v[2], v[3])
        elif name == "dare":
            want = np_dare(ts[0], ts[1:], v[:2], v[2], v[3], 5, key)
        else:
            want = np_slerp(ts[0], ts[1], v[0]).reshape(ts[0].shape)
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=2e-6, err_msg=key)
        checked += 1
    assert checked > 1000  # every UNet, TE and VAE weight of the SD1 layout


# ---- bad input ----------------------------------------------------------------------------------
def sources(n):
    return tuple(Source(path=f"/m{i}.safetensors") for i in range(n))


def test_bad_method_inputs_say_what_is_wrong():
    with pytest.raises(ValidationError, match="did you mean 'ties'"):
        Recipe.uniform("sd1", "tie", sources(3), (0.5, 0.5, 0.2, 1))
    with pytest.raises(ValidationError, match=r"slerp merges 2 model\(s\) \(A B\), got 3"):
        Recipe.uniform("sd1", "slerp", sources(3), (0.5,))
    with pytest.raises(ValidationError, match=r"density = 1.5 in IN00 is outside its range \[0, 1\]"):
        Recipe.uniform("sd1", "ties", sources(3), (0.5, 0.5, 0.2, 1), blocks={"IN00": (0.5, 0.5, 1.5, 1)})
    with pytest.raises(ValidationError, match="needs a seed"):
        Recipe.uniform("sd1", "dare", sources(3), (0.5, 0.5, 0.5, 1))
    with pytest.raises(ValidationError, match="w2 = -0.1 .* outside"):
        Recipe.uniform("sd1", "ties", sources(3), (0.5, -0.1, 0.2, 1))
    assert Recipe.uniform("sd1", "DARE", sources(3), (0.5, 0.5, 0.5, 1), seed=3).seed == 3
