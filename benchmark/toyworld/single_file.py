"""Diffusers module state dicts -> the SD1 single-file key layout (A1111/ComfyUI `.safetensors`).

This is the mapping of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py,
written for any number of levels and layers per block (the toy world keeps SD1's 4 levels and
2 layers, but its VAE is smaller). diffusers' own single-file loader is the inverse, and a test
holds the round trip exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _unet_prefix_map(keys: set[str], levels: int, layers: int) -> list[tuple[str, str]]:
    """(diffusers prefix, ldm prefix) pairs, most specific first."""
    pairs = list(_UNET_TOP.items())
    step = layers + 1  # SD1 puts a downsampler (or upsampler) after each level's layers
    for i in range(levels):
        for j in range(layers):
            n = step * i + j + 1
            pairs += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0."),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")]
        for j in range(step):
            n = step * i + j
            pairs += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0."),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")]
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{step * (i + 1)}.0.op."))
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys)
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{step * i + layers}.{2 if has_attn else 1}."))
    pairs += [("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.0.", "middle_block.0."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def _vae_prefix_map(levels: int, layers: int) -> list[tuple[str, str]]:
    pairs = [("conv_norm_out.", "norm_out.")]
    for i in range(levels):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        for j in range(layers + 1):  # the decoder has one more layer per level
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}."))
        if i < levels - 1:
            pairs += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                      (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
                  (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")]
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if key.startswith(old) or f".{old}" in key:
            return key.replace(old, new, 1)
    return key


def _levels_and_layers(keys: set[str], block: str) -> tuple[int, int]:
    depth = block.count(".")  # position of the level index in a key
    levels = 1 + max(int(k.split(".")[depth]) for k in keys if k.startswith(block))
    layers = 1 + max(int(k.split(".")[depth + 2]) for k in keys if k.startswith(f"{block}0.resnets."))
    return levels, layers


def unet_to_ldm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` keys."""
    keys = set(sd)
    levels, layers = _levels_and_layers(keys, "down_blocks.")
    pairs = _unet_prefix_map(keys, levels, layers)
    out = {}
    for k, v in sd.items():
        new = _rename(k, pairs)
        if ".resnets." in k or k.startswith("mid_block.resnets."):
            head, _, tail = new.rpartition(".")  # tail = weight/bias
            parts = head.split(".")
            parts[-1] = _UNET_RESNET.get(parts[-1], parts[-1])
            new = ".".join(parts) + "." + tail
            for old, repl in _UNET_RESNET.items():  # names with a sub index (none in SD1, kept for safety)
                new = new.replace(f".{old}.", f".{repl}.")
        out[UNET_PREFIX + new] = v
    return out


def vae_to_ldm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> `first_stage_model.*` keys (attention as 1x1 convs, as SD1 stores them)."""
    keys = set(sd)
    levels, layers = _levels_and_layers(keys, "encoder.down_blocks.")
    pairs = _vae_prefix_map(levels, layers)
    out = {}
    for k, v in sd.items():
        new = _rename(k, pairs)
        if ".resnets." in k:
            for old, repl in _VAE_RESNET.items():
                new = new.replace(f".{old}.", f".{repl}.")
        if ".attentions." in k:
            for old, repl in _VAE_ATTN.items():
                new = new.replace(f".{old}", f".{repl}")
            if v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)
        out[VAE_PREFIX + new] = v
    return out


def text_encoder_to_ldm(sd: Mapping[str, torch.Tensor], max_positions: int | None = None) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*` keys.

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); SD1 files keep it.
    SD1 files also carry the `position_ids` buffer, which newer transformers no longer saves;
    it is written back (int64) when `max_positions` is given, as real checkpoints have it.
    """
    out = {}
    for k, v in sd.items():
        name = k if k.startswith("text_model.") else "text_model." + k
        out[TE_PREFIX + name] = v
    pos = TE_PREFIX + "text_model.embeddings.position_ids"
    if max_positions is not None and pos not in out:
        out[pos] = torch.arange(max_positions, dtype=torch.int64).unsqueeze(0)
    return out


def to_single_file(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three diffusers/transformers modules -> one SD1 single-file state dict."""
    te_positions = text_encoder.config.max_position_embeddings
    return {
        **unet_to_ldm(unet.state_dict()),
        **vae_to_ldm(vae.state_dict()),
        **text_encoder_to_ldm(text_encoder.state_dict(), te_positions),
    }


def from_single_file(state_dict: Mapping[str, torch.Tensor], unet, vae, text_encoder) -> None:
    """Load an SD1 single-file state dict into the modules through diffusers' own converters."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    sd = dict(state_dict)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)
    te = convert_ldm_clip_checkpoint(sd)
    te.pop("text_model.embeddings.position_ids", None)
    if not hasattr(text_encoder, "text_model"):  # flattened CLIPTextModel (transformers >= 5.6)
        te = {k.removeprefix("text_model."): v for k, v in te.items()}
    text_encoder.load_state_dict(te, strict=True)
