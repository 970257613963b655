"""Single-file checkpoint keys (A1111/ComfyUI ldm layout) <-> diffusers module parameter names.

`to_diffusers` uses diffusers' own converters (diffusers.loaders.single_file_utils), so a
checkpoint reaches a pipeline exactly as `from_single_file` would put it there.
`to_single_file` / `single_file_name` are the inverse rename (diffusers' convert_diffusers_to_original
scripts in data form, driven by the UNet/VAE configs): they read diffusers folders as
single-file checkpoints, name single-file keys in error messages and write test checkpoints.
`unet_prefix_map(config)` is the UNet table both directions use (LoRA key mapping too).

Family prefixes:
  UNet  model.diffusion_model.            VAE  first_stage_model.
  sd1   TE  cond_stage_model.transformer.text_model.        (CLIP ViT-L)
  sd2   TE  cond_stage_model.model.                         (OpenCLIP ViT-H, last block unused)
  sdxl  TE  conditioner.embedders.0.transformer.text_model. (CLIP ViT-L)
        TE2 conditioner.embedders.1.model.                  (OpenCLIP bigG, with projection)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIXES = {
    "sd1": {"text_encoder": "cond_stage_model.transformer."},
    "sd2": {"text_encoder": "cond_stage_model.model."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.", "text_encoder_2": "conditioner.embedders.1.model."},
}
OPEN_CLIP = {("sd2", "text_encoder"), ("sdxl", "text_encoder_2")}
_LAYER = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.")

Tensors = dict[str, torch.Tensor]


def normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> Tensors:
    """Drop a `state_dict.` wrapper and give old SD1 text-encoder keys their `text_model.` level."""
    out: Tensors = {}
    old_te = "cond_stage_model.transformer."
    for k, v in state_dict.items():
        k = k.removeprefix("state_dict.")
        if k.startswith(old_te) and not k.startswith(old_te + "text_model."):
            k = old_te + "text_model." + k[len(old_te):]
        out[k] = v
    return out


def _has_text_model(module: torch.nn.Module) -> bool:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still wraps `text_model`.
    return "text_model" in module._modules


def to_diffusers(
    state_dict: Mapping[str, torch.Tensor],
    family: str,
    modules: Mapping[str, torch.nn.Module],
    configs: Mapping[str, Mapping[str, Any]],
) -> dict[str, Tensors]:
    """Single-file state dict -> {module name: {parameter name: tensor}} (pure; no module is touched)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    sd = normalise_keys(state_dict)
    out: dict[str, Tensors] = {
        "unet": convert_ldm_unet_checkpoint(sd, dict(configs["unet"])),
        "vae": convert_ldm_vae_checkpoint(sd, dict(configs["vae"])),
    }
    for name, prefix in TE_PREFIXES[family].items():
        if name not in modules:
            continue
        if (family, name) in OPEN_CLIP:
            te = convert_open_clip_checkpoint(modules[name], sd, prefix=prefix)
        else:
            te = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(prefix)})
        n_layers = int(configs[name]["num_hidden_layers"])
        kept: Tensors = {}
        for k, v in te.items():
            m = _LAYER.match(k)
            # SD2 files carry OpenCLIP's full stack but SD2 conditions on the penultimate layer, so the
            # diffusers config leaves the last block out; a position_ids buffer is not a parameter.
            if (m and int(m.group(1)) >= n_layers) or k.endswith("position_ids"):
                continue
            kept[k if _has_text_model(modules[name]) else k.removeprefix("text_model.")] = v
        out[name] = kept
    return out


# ---------------------------------------------------------------- diffusers -> single file names

def _vae_name(key: str, n_up: int) -> str:
    k = key
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
    k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.block.", k)
    k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.", k)
    k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
    if "mid_block.attentions.0." in k:
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                     ("to_out.0.", "proj_out.")):
            k = k.replace(a, b)
    return k.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")


_OPEN_CLIP_RENAMES = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."),
                      ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def single_file_name(module: str, key: str, family: str, configs: Mapping[str, Mapping[str, Any]]) -> str:
    """The single-file key a diffusers parameter comes from (q/k/v of OpenCLIP share `in_proj_*`)."""
    if module == "unet":
        for hf, sf, resnet in sorted(unet_prefix_map(configs["unet"]), key=lambda t: -len(t[0])):
            if key.startswith(hf):
                rest = key[len(hf):]
                if resnet:
                    for a, b in UNET_RESNET_RENAMES:
                        rest = rest.replace(a, b)
                return UNET_PREFIX + sf + rest
        return UNET_PREFIX + key
    if module == "vae":
        return VAE_PREFIX + _vae_name(key, len(configs["vae"]["up_block_types"]))
    prefix = TE_PREFIXES[family][module]
    k = key.removeprefix("text_model.")
    if (family, module) not in OPEN_CLIP:
        return prefix + "text_model." + k
    if k == "text_projection.weight":
        return prefix + "text_projection"
    k = k.replace("embeddings.token_embedding.", "token_embedding.").replace(
        "embeddings.position_embedding.weight", "positional_embedding").replace("final_layer_norm.", "ln_final.")
    m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
    if m:
        rest = m.group(2)
        qkv = re.match(r"self_attn\.[qkv]_proj\.(weight|bias)", rest)
        if qkv:
            rest = f"attn.in_proj_{qkv.group(1)}"
        for a, b in _OPEN_CLIP_RENAMES:
            rest = rest.replace(a, b)
        k = f"transformer.resblocks.{m.group(1)}.{rest}"
    return prefix + k


def to_single_file(modules: Mapping[str, Mapping[str, torch.Tensor]], family: str,
                   configs: Mapping[str, Mapping[str, Any]]) -> Tensors:
    """Diffusers module state dicts -> one single-file state dict in `family`'s key layout."""
    out: Tensors = {}
    for module, sd in modules.items():
        open_clip = (family, module) in OPEN_CLIP
        qkv: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in sd.items():
            name = single_file_name(module, key, family, configs)
            if module == "vae" and ".mid.attn_1." in name and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
            if open_clip and name.endswith("text_projection"):
                value = value.T
            if open_clip and ".attn.in_proj_" in name:
                which = re.search(r"self_attn\.([qkv])_proj", key).group(1)
                qkv.setdefault(name, {})[which] = value
                continue
            out[name] = value.detach().clone().contiguous()
        for name, parts in qkv.items():
            out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
        if module.startswith("text_encoder") and not open_clip:
            # Real CLIP-L single files carry the position-id buffer (transformers no longer saves it).
            n = int(configs[module]["max_position_embeddings"])
            out[TE_PREFIXES[family][module] + "text_model.embeddings.position_ids"] = torch.arange(n)[None]
    return out


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
