"""The shipped key sets agree with models built from their published configs (on the meta device)."""

import math

import pytest
import torch
from sd_keysets import real_keys

UNET_CONFIGS = {
    "sd1": {"cross_attention_dim": 768},
    "sd2": {
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
    },
    "sdxl": {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_parameter_count_matches_diffusers(family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[family])
    expected = sum(p.numel() for p in unet.parameters())
    ours = sum(
        math.prod(s) for k, (s, _d, _o) in real_keys(family).items() if k.startswith("model.diffusion_model.")
    )
    assert ours == expected


def test_sd2_text_encoder_matches_open_clip_vit_h():
    import open_clip
    from open_clip.model import _build_text_tower

    cfg = open_clip.get_model_config("ViT-H-14")
    with torch.device("meta"):
        tower = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"])
    expected = {k: tuple(p.shape) for k, p in tower.named_parameters()}
    prefix = "cond_stage_model.model."
    ours = {k[len(prefix) :]: s for k, (s, _d, _o) in real_keys("sd2").items() if k.startswith(prefix)}
    assert ours.pop("logit_scale") == ()  # the CLIP model's, saved beside the text tower
    assert ours == expected
