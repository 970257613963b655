import math

import pytest
from sd_keysets import real_keys

from merge_core import Family, layout_for

# Parameter counts of the released models' UNets (SD1.5, SD2.1, SDXL base).
UNET_PARAMS = {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_real_key_is_in_one_block_or_declared(family):
    layout = layout_for(family)
    keys = real_keys(family)
    assert layout.unknown_keys(keys) == []
    per_block = dict.fromkeys(layout.weight_ids, 0)
    copied = []
    for key, (shape, dtype, _opt) in keys.items():
        block = layout.block_of(key)
        if block is None:
            assert layout.is_non_mergeable(key)
            copied.append(key)
        else:
            assert not layout.is_non_mergeable(key)
            assert dtype == "float32", key  # only float weights are merged
            per_block[block] += math.prod(shape)
    # every block and component holds weights, and the UNet blocks add up to the whole UNet
    assert all(n > 0 for n in per_block.values()), per_block
    assert sum(per_block[b] for b in layout.blocks) == UNET_PARAMS[family]
    assert any(k.endswith("position_ids") for k in copied) or family == "sd2"  # OpenCLIP has none
    assert "alphas_cumprod" in copied


def test_block_rules_follow_the_convention():
    sd1 = layout_for(Family.SD1)
    u = "model.diffusion_model."
    assert sd1.block_of(u + "time_embed.0.weight") == "IN00"
    assert sd1.block_of(u + "input_blocks.0.0.weight") == "IN00"
    assert sd1.block_of(u + "input_blocks.11.0.out_layers.3.weight") == "IN11"
    assert sd1.block_of(u + "middle_block.1.proj_out.weight") == "M00"
    assert sd1.block_of(u + "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0.weight") == "OUT03"
    assert sd1.block_of(u + "out.2.weight") == "OUT11"
    assert sd1.block_of("cond_stage_model.transformer.text_model.final_layer_norm.weight") == "TE"
    assert sd1.block_of("first_stage_model.decoder.conv_out.weight") == "VAE"
    assert sd1.block_of("cond_stage_model.transformer.text_model.embeddings.position_ids") is None
    assert sd1.unknown_keys(["something.else", u + "input_blocks.12.0.weight"]) == [
        "something.else",
        u + "input_blocks.12.0.weight",
    ]
    xl = layout_for("sdxl")
    assert xl.block_of(u + "label_emb.0.0.weight") == "IN00"
    assert xl.block_of(u + "out.0.bias") == "OUT08"
    assert xl.block_of("conditioner.embedders.1.model.text_projection") == "TE"
    assert len(sd1.weight_ids) == 27 and sd1.weight_ids[-2:] == ("TE", "VAE")
    assert len(xl.blocks) == 19


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="sd1, sd2, sdxl"):
        layout_for("sd3")
