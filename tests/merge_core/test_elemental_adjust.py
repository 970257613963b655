"""Elemental merge, include/exclude and Adjust: parsing, per-key arithmetic on tiny tensors, and the
streaming merge honouring them (expected values computed by hand / independently here)."""

import numpy as np
import pytest
import torch
from sd_keysets import tiny_state_dict

from merge_core import Recipe, Source, layout_for, load_state_dict, merge_to_file, save_safetensors
from merge_core.adjust import KEYS, AdjustError, apply_op, parse_adjust
from merge_core.block_sets import BlockSetError, parse_block_set
from merge_core.elemental import ElementalError, elemental_params, parse_elemental, parse_selection

SD1 = layout_for("sd1")
U = "model.diffusion_model."
K_ATTN2_K = U + "output_blocks.6.1.transformer_blocks.0.attn2.to_k.weight"
K_ATTN2_Q = U + "output_blocks.6.1.transformer_blocks.0.attn2.to_q.weight"
K_ATTN1_Q = U + "output_blocks.6.1.transformer_blocks.0.attn1.to_q.weight"
K_CONV = U + "output_blocks.6.0.in_layers.2.weight"


def test_block_sets_ranges_not_and_base():
    assert parse_block_set("IN01 OUT03-OUT06", SD1) == {"IN01", "OUT03", "OUT04", "OUT05", "OUT06"}
    everything = set(SD1.weight_ids)
    assert parse_block_set("NOT M00 OUT03-OUT06", SD1) == everything - {"M00", "OUT03", "OUT04", "OUT05", "OUT06"}
    assert parse_block_set("IN11-M00", SD1) == {"IN11", "M00"}  # ranges follow layout order
    assert parse_block_set("base", SD1) == {"TE", "VAE"}
    assert parse_block_set("", SD1) == everything


@pytest.mark.parametrize(("text", "closest"), [("IN4", "IN04"), ("OUT3-OUT06", "OUT03"), ("NOT MID", "M00")])
def test_unknown_block_names_the_closest(text, closest):
    with pytest.raises(BlockSetError, match=f"did you mean {closest}"):
        parse_block_set(text, SD1)
    with pytest.raises(ElementalError, match=f"did you mean {closest}"):
        parse_elemental(f"{text}::0.5", SD1)


def test_backward_range_and_malformed_entries_are_refused():
    with pytest.raises(BlockSetError, match="runs backwards; write IN01-IN05"):
        parse_block_set("IN05-IN01", SD1)
    with pytest.raises(ElementalError, match="exactly two ':'"):
        parse_elemental("OUT06:attn", SD1)
    with pytest.raises(ElementalError, match="is not a number"):
        parse_elemental("OUT06:attn:half", SD1)


def test_later_entries_win_and_substrings_match():
    # SuperMerger's documented example: attn2.to_k gets 0.2, the other attn keys 0.5
    entries = parse_elemental("OUT06:attn:0.5, OUT06:attn2.to_k:0.2", SD1)
    assert elemental_params(entries, K_ATTN2_K, "OUT06", (0.9,)) == (0.2,)
    assert elemental_params(entries, K_ATTN2_Q, "OUT06", (0.9,)) == (0.5,)
    assert elemental_params(entries, K_ATTN1_Q, "OUT06", (0.9,)) == (0.5,)
    assert elemental_params(entries, K_CONV, "OUT06", (0.9,)) == (0.9,)  # no entry: the block's alpha
    # reversed order: the general entry now overrides the specific one
    entries = parse_elemental("OUT06:attn2.to_k:0.2\nOUT06:attn:0.5", SD1)
    assert elemental_params(entries, K_ATTN2_K, "OUT06", (0.9,)) == (0.5,)


def test_not_blocks_not_elements_ranges_and_vectors():
    entries = parse_elemental("NOT OUT06::0.1, OUT05-OUT07:NOT attn2:0.7, OUT06:attn1:0.3/0.4", SD1)
    assert elemental_params(entries, K_ATTN2_Q, "OUT06", (0.9, 0.8)) == (0.9, 0.8)  # OUT06 + attn2: nothing
    assert elemental_params(entries, K_CONV, "OUT06", (0.9, 0.8)) == (0.7, 0.8)  # alpha only, beta kept
    assert elemental_params(entries, K_ATTN1_Q, "OUT06", (0.9, 0.8)) == (0.3, 0.4)  # whole vector
    m00 = U + "middle_block.1.transformer_blocks.0.attn2.to_q.weight"
    assert elemental_params(entries, m00, "M00", (0.9, 0.8)) == (0.1, 0.8)  # NOT OUT06 covers M00
    assert elemental_params(entries, "cond_stage_model.x.weight", "TE", (0.9, 0.8)) == (0.1, 0.8)


def test_selection_include_and_exclude():
    ex = parse_selection("exclude", "VAE OUT11 : attn2", SD1)
    assert ex.held("first_stage_model.decoder.conv_in.weight", "VAE")
    assert ex.held(K_ATTN2_Q, "OUT06") and not ex.held(K_ATTN1_Q, "OUT06")
    inc = parse_selection("include", "IN01-IN02", SD1)
    assert not inc.held(U + "input_blocks.1.0.in_layers.2.weight", "IN01")
    assert inc.held(K_CONV, "OUT06")
    with pytest.raises(BlockSetError, match="did you mean VAE"):
        parse_selection("exclude", "VEA", SD1)


def test_adjust_counts_and_values():
    with pytest.raises(AdjustError, match="has 7 value"):
        parse_adjust("1,2,3,4,5,6,7")
    with pytest.raises(AdjustError, match="8 numbers"):
        parse_adjust("1,2,3,4,5,6,7,x")
    adj = parse_adjust("1 2 3 4 5 6 7 8")
    w_in, b_in, w_norm, b_norm, w_out, b_out = KEYS
    sd1, xl = adj.ops("sd1"), adj.ops("sdxl")
    # scales by hand: 1-0.01*1, 1+0.02*1, 1-0.01*2, 1+0.02*2, 1-0.01*3
    for ops in (sd1, xl):
        assert [ops[k][0] for k in (w_in, b_in, w_norm, b_norm, w_out)] == pytest.approx([0.99, 1.02, 0.98, 1.04, 0.97])
    # SD1 colours: c1 = .02(-5+6+8), c2 = .02(5/3+6-7), c3 = .02(10/3-7+8); contrast .02*4
    assert sd1[b_out][1] == pytest.approx((0.08, 0.18, 0.02 * (2 / 3), 0.02 * (13 / 3)))
    # SDXL colours: c1 = .02(6-7-8), c2 = .02(-7+8), c3 = .02*5
    assert xl[b_out][1] == pytest.approx((0.08, -0.18, 0.02, 0.10))
    x = torch.tensor([1.0, -2.0, 0.5, 4.0])
    np.testing.assert_allclose(apply_op(x.clone(), sd1[b_out]).numpy(),
                               np.array([1.08, -1.82, 0.5 + 0.04 / 3, 4.0 + 0.26 / 3]), rtol=1e-6)
    np.testing.assert_allclose(apply_op(x.clone(), sd1[w_out]).numpy(), x.numpy() * 0.97, rtol=1e-6)
    with pytest.raises(ValueError, match="4-channel latents"):
        apply_op(torch.zeros(3), sd1[b_out])


@pytest.fixture
def two_models(tmp_path):
    sds, srcs = [], []
    for i in range(2):
        sd = tiny_state_dict("sd1", seed=30 + i, dtype=torch.float32)
        sds.append(sd)
        srcs.append(Source.from_path(save_safetensors(sd, tmp_path / f"m{i}.safetensors")))
    return sds, tuple(srcs)


def test_streaming_merge_applies_elemental_selection_and_adjust(two_models, tmp_path):
    sds, srcs = two_models
    recipe = Recipe.uniform("sd1", "weighted-sum", srcs, (0.5,), dtype="fp32").model_copy(update={
        "elemental": parse_elemental("OUT00-OUT11:in_layers:0.0, OUT03-OUT11:in_layers.2:0.9", SD1),
        "selection": parse_selection("exclude", "VAE : attn1 out.2.weight", SD1),
        "adjust": parse_adjust("2,0,-3,1,4,0,0,0"),
    })
    recipe = Recipe.model_validate(recipe.model_dump())  # validators run, JSON-able
    assert Recipe.from_json(recipe.to_json()) == recipe
    got = load_state_dict(merge_to_file(recipe, tmp_path / "out.safetensors", progress=False))
    a, b = sds
    checked = set()
    for key in a:
        block = SD1.block_of(key)
        if block is None:
            continue
        # the rules by hand
        if block == "VAE" or "attn1" in key or "out.2.weight" in key:
            want = a[key].float()  # held from A, not adjusted
            checked.add(key)
        else:
            alpha = 0.5
            if block.startswith("OUT") and "in_layers" in key:
                alpha = 0.0
                if block >= "OUT03" and "in_layers.2" in key:
                    alpha = 0.9
            want = (1 - alpha) * a[key].float() + alpha * b[key].float()
            if key == U + "input_blocks.0.0.weight":
                want = want * (1 - 0.02)
            elif key == U + "input_blocks.0.0.bias":
                want = want * (1 + 0.04)
            elif key == U + "out.2.bias":
                want = want + torch.tensor([0.02, -0.08, 0.08 / 3, 0.16 / 3])
            checked.add(key)
        torch.testing.assert_close(got[key], want, rtol=1e-6, atol=1e-6, msg=key)
    assert U + "out.2.bias" in checked and U + "out.2.weight" in checked and U + "output_blocks.5.0.in_layers.2.weight" in checked


def test_recipe_refuses_bad_rules(two_models):
    _, srcs = two_models
    base = Recipe.uniform("sd1", "weighted-sum", srcs, (0.5,))
    with pytest.raises(ValueError, match="takes 1 value"):
        Recipe.model_validate({**base.model_dump(), "elemental": parse_elemental("IN01::0.1/0.2", SD1)})
    with pytest.raises(ValueError, match="Adjust takes 8 values"):
        Recipe.model_validate({**base.model_dump(), "adjust": {"values": [1, 2, 3]}})


def test_sdxl_elemental_uses_sdxl_block_names():
    """SuperMerger addresses SDXL blocks with SD1 names in Elemental (its issue #468); here names are the family's."""
    xl = layout_for("sdxl")
    mid = U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    out = U + "output_blocks.0.1.transformer_blocks.0.attn2.to_k.weight"
    entries = parse_elemental("M00:attn2:0.1, OUT00:attn2:0.2", xl)
    assert xl.block_of(mid) == "M00" and xl.block_of(out) == "OUT00"
    assert elemental_params(entries, mid, "M00", (0.5,)) == (0.1,)
    assert elemental_params(entries, out, "OUT00", (0.5,)) == (0.2,)
    with pytest.raises(ElementalError, match="unknown block 'OUT09' for SDXL"):
        parse_elemental("OUT09::0.3", xl)
