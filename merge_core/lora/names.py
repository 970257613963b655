"""kohya LoRA module names -> the single-file checkpoint weights they change.

kohya names a module ``prefix + "_" + module path`` with dots turned into underscores:
``lora_unet_*`` (SD1/SD2 in diffusers naming, SDXL in ldm/sgm naming), ``lora_te_*``
(SD1/SD2 text encoder, in transformers' CLIP naming) and ``lora_te1_*``/``lora_te2_*``
(SDXL). Both UNet spellings are accepted for every family; files we write use kohya's
own choice per family. The map is built from the checkpoint's own keys, never by
parsing underscores back into dots (module names contain underscores).

OpenCLIP text encoders (SD2, SDXL's second) store q, k and v as one ``in_proj_weight``;
kohya's ``self_attn_{q,k,v}_proj`` modules change one third of its rows each.
Source of the naming: kohya-ss sd-scripts ``networks/lora.py``, as described in
shared/notes/supermerger-spec.md section 7.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..diffusers_names import unet_config_from_keys, unet_diffusers_names
from ..family import Family
from ..layout import layout_for

UNET = "model.diffusion_model."
# (kohya prefix, checkpoint prefix, OpenCLIP?) per family
TEXT_ENCODERS: dict[Family, tuple[tuple[str, str, bool], ...]] = {
    Family.SD1: (("lora_te", "cond_stage_model.transformer.", False),),
    Family.SD2: (("lora_te", "cond_stage_model.model.", True),),
    Family.SDXL: (
        ("lora_te1", "conditioner.embedders.0.transformer.", False),
        ("lora_te2", "conditioner.embedders.1.model.", True),
    ),
}
# kohya's default targets: attention and MLP linears of the text encoder ...
_TE_MODULE = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
# ... and inside the UNet: transformer blocks (LoRA), resnets and resamplers (LoCon).
_UNET_MODULE = re.compile(r"\.(attentions|resnets|downsamplers|upsamplers)\.")
_OPEN_CLIP = {"attn.out_proj": "self_attn_out_proj", "mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}


@dataclass(frozen=True)
class LoraTarget:
    """The weight a LoRA module changes.

    ``key``: single-file key; ``rows``: (start, stop) of a fused q/k/v ``in_proj_weight``
    or None for the whole weight; ``shape``: shape of that (row slice of the) weight;
    ``block``: weight id (a UNet block or "TE"); ``canonical``: the spelling kohya writes
    for this family; ``default``: a module kohya trains by default (what extraction writes).
    """

    key: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    block: str
    canonical: bool
    default: bool


def lora_targets(ckpt) -> dict[str, LoraTarget]:
    """kohya module name -> LoraTarget for every 2-D/4-D weight of ``ckpt`` a LoRA can change.

    ``ckpt`` is anything with ``.family``, ``.keys()`` and ``.shape(key)`` (a Checkpoint).
    """
    family = Family(ckpt.family)
    layout = layout_for(family)
    keys = [k for k in ckpt.keys() if k.endswith(".weight") or k.endswith("in_proj_weight")]
    out: dict[str, LoraTarget] = {}

    def add(name: str, key: str, rows, canonical: bool, default: bool) -> None:
        shape = ckpt.shape(key)
        if len(shape) not in (2, 4):
            return
        if rows is not None:
            shape = (rows[1] - rows[0], *shape[1:])
        block = layout.block_of(key)
        if block is None or block == "VAE":
            return
        out.setdefault(name, LoraTarget(key, rows, tuple(shape), block, canonical, default))

    unet_keys = [k for k in keys if k.startswith(UNET)]
    try:
        diffusers = unet_diffusers_names(unet_keys, unet_config_from_keys(unet_keys))
    except ValueError:
        diffusers = {}
    for key in unet_keys:
        ldm = key[len(UNET):].removesuffix(".weight")
        hf = diffusers.get(key, "").removesuffix(".weight")
        default_ldm = family == Family.SDXL
        hf_default = bool(hf) and bool(_UNET_MODULE.search("." + hf))
        add("lora_unet_" + ldm.replace(".", "_"), key, None, default_ldm, hf_default)
        if hf:
            add("lora_unet_" + hf.replace(".", "_"), key, None, not default_ldm, hf_default)
    for tag, prefix, open_clip in TEXT_ENCODERS[family]:
        for key in keys:
            if not key.startswith(prefix):
                continue
            path = key[len(prefix):]
            if not open_clip:
                module = path.removesuffix(".weight")
                add(f"{tag}_{module.replace('.', '_')}", key, None, True, bool(_TE_MODULE.search(module)))
                continue
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", path)
            if not m:
                continue
            layer, rest = m.groups()
            base = f"{tag}_text_model_encoder_layers_{layer}_"
            if rest == "attn.in_proj_weight":
                width = ckpt.shape(key)[0] // 3
                for i, q in enumerate("qkv"):
                    add(f"{base}self_attn_{q}_proj", key, (i * width, (i + 1) * width), True, True)
            elif rest.removesuffix(".weight") in _OPEN_CLIP:
                add(base + _OPEN_CLIP[rest.removesuffix(".weight")], key, None, True, True)
    return out


def lora_family_hint(names) -> Family | None:
    """The family a LoRA's module names point to, when they say (SDXL's two text encoders)."""
    names = list(names)
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return Family.SDXL
    if any(n.startswith("lora_te_") for n in names):
        return None  # SD1 or SD2: told apart by shapes
    return None
