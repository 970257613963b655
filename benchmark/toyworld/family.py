"""The toy world's model family: SD1 architecture at toy size, built offline from shipped configs.

`configs/families/toyworld/` is a diffusers pipeline folder without weights (model_index.json,
unet/, vae/, text_encoder/, tokenizer/, scheduler/). Everything here builds from those files,
so nothing touches a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "families" / "toyworld"


def _config(sub: str) -> dict:
    path = CONFIG_DIR / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: toy-world family config missing; restore configs/families/toyworld from git")
    return json.loads(path.read_text())


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(_config("unet"))


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(_config("vae"))


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(CONFIG_DIR / "tokenizer"))


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(_config("scheduler"))


def build_pipeline(unet=None, vae=None, text_encoder=None, *, scheduler=None):
    """An ordinary StableDiffusionPipeline over the given (or freshly initialised) modules."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else build_vae(),
        text_encoder=text_encoder if text_encoder is not None else build_text_encoder(),
        tokenizer=load_tokenizer(),
        unet=unet if unet is not None else build_unet(),
        scheduler=scheduler if scheduler is not None else build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded_init(seed: int):
    """Fresh (unet, vae, text_encoder) with weights drawn from `seed` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_unet(), build_vae(), build_text_encoder()
