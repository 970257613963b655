"""Diffusers UNet module names <-> single-file (ldm) names: the conversion table as data.

``unet_prefix_map(config)`` lists, for a UNet2DConditionModel config (only
``layers_per_block``, ``down_block_types`` and ``up_block_types`` are read), which diffusers
prefix each single-file prefix corresponds to (diffusers' convert_diffusers_to_original
scripts in data form). benchmark.single_file renames whole state dicts with it; LoRA key
mapping (SD1/SD2 kohya files use diffusers names) uses it in the other direction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

UNET_RESNET_RENAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, single-file prefix, is_resnet) for a UNet2DConditionModel config."""
    lpb = int(config["layers_per_block"])
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    pairs: list[tuple[str, str, bool]] = [
        ("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False), ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False), ("conv_out.", "out.2.", False),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for i, kind in enumerate(down):
        for j in range(lpb):
            n = i * (lpb + 1) + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", True))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", False))
        if i < len(down) - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", False))
    for i, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for j in range(lpb + 1):
            n = i * (lpb + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", True))
            if attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", False))
        if i < len(up) - 1:
            n = i * (lpb + 1) + lpb
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{2 if attn else 1}.", False))
    return pairs


def unet_config_from_keys(keys: Iterable[str], prefix: str = "model.diffusion_model.") -> dict[str, Any]:
    """The parts of a UNet config that ``unet_prefix_map`` reads, inferred from single-file keys.

    ``layers_per_block`` is the index of the first downsampler (``input_blocks.{lpb+1}.0.op``);
    a level is cross-attention when its first block has a ``.1.`` (transformer) part.
    Raises ValueError when the keys hold no SD-style UNet.
    """
    ks = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    inputs = {int(m.group(1)) for k in ks if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    ops = sorted(int(m.group(1)) for k in ks if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    outputs = {int(m.group(1)) for k in ks if (m := re.match(r"output_blocks\.(\d+)\.", k))}
    if not inputs or not ops or not outputs:
        raise ValueError("no SD-style UNet (input_blocks with a downsampler, output_blocks) in these keys")
    lpb = ops[0] - 1
    levels = len(outputs) // (lpb + 1)
    has = set(ks)
    attn_in = [any(k.startswith(f"input_blocks.{i * (lpb + 1) + 1}.1.") for k in has) for i in range(levels)]
    attn_out = [any(k.startswith(f"output_blocks.{i * (lpb + 1)}.1.") and ".transformer_blocks." in k
                    or k.startswith(f"output_blocks.{i * (lpb + 1)}.1.proj_in") for k in has) for i in range(levels)]
    return {
        "layers_per_block": lpb,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn_in],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn_out],
    }


def unet_diffusers_names(keys: Iterable[str], config: Mapping[str, Any],
                         prefix: str = "model.diffusion_model.") -> dict[str, str]:
    """Single-file UNet key -> diffusers parameter name, for every key the table covers.

    Each answer is checked by converting it back (the table is applied both ways), so a key
    the table does not cover is left out rather than guessed.
    """
    pairs = sorted(unet_prefix_map(config), key=lambda t: -len(t[1]))
    out: dict[str, str] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for hf, sf, resnet in pairs:
            if rest.startswith(sf):
                tail = rest[len(sf):]
                if resnet:
                    for a, b in UNET_RESNET_RENAMES:
                        if tail.startswith(b + "."):
                            tail = a + tail[len(b):]
                            break
                name = hf + tail
                if _to_single_file(name, config) == rest:
                    out[key] = name
                break
    return out


def _to_single_file(name: str, config: Mapping[str, Any]) -> str:
    for hf, sf, resnet in sorted(unet_prefix_map(config), key=lambda t: -len(t[0])):
        if name.startswith(hf):
            rest = name[len(hf):]
            if resnet:
                for a, b in UNET_RESNET_RENAMES:
                    rest = rest.replace(a, b)
            return sf + rest
    return name
