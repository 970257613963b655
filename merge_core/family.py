"""Model families and variants, and how to tell them apart from a checkpoint's keys and shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum


class Family(StrEnum):
    """A key layout with its own block map (``layouts/<value>.yaml``)."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"


_UNET = "model.diffusion_model."
# Cross-attention context width of the first transformer block: 768 (CLIP-L) for SD1, 1024 (OpenCLIP-H) for SD2.
_CONTEXT_PROBE = _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
# SD2 UNets project into their transformers with linear layers (2-D weights), SD1 with 1x1 convs (4-D).
_PROJ_PROBE = _UNET + "input_blocks.1.1.proj_in.weight"
# The SDXL refiner's UNet has four levels (input blocks 0-11; the base stops at 8) and its only
# text encoder, OpenCLIP-bigG, sits at embedders.0 (the base has CLIP-L there and bigG at embedders.1).
_REFINER_UNET = (_UNET + "input_blocks.9.", _UNET + "input_blocks.10.", _UNET + "output_blocks.11.")
_REFINER_TE = "conditioner.embedders.0.model."
_BASE_TE = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.")


def detect_family(keys: Iterable[str], shape: Callable[[str], tuple[int, ...]]) -> Family | None:
    """Family from normalised keys; ``None`` when the keys match no known family.

    Key names decide first (they survive pruning and the toy world's tiny shapes); for
    UNet-only files the cross-attention width (1024) or linear transformer projections mark SD2.
    """
    keyset = set(keys)
    if any(k.startswith("conditioner.embedders.") for k in keyset) or any(
        k.startswith(_UNET + "label_emb.") for k in keyset
    ):
        refiner_te = any(k.startswith(_REFINER_TE) for k in keyset)
        base_te = any(k.startswith(_BASE_TE) for k in keyset)
        refiner_unet = any(k.startswith(_REFINER_UNET) for k in keyset)
        if (refiner_te and not base_te) or refiner_unet:
            return Family.SDXL_REFINER
        return Family.SDXL
    if any(k.startswith("cond_stage_model.model.") for k in keyset):
        return Family.SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in keyset):
        return Family.SD1
    if any(k.startswith(_UNET + "input_blocks.") for k in keyset):
        if _CONTEXT_PROBE in keyset and shape(_CONTEXT_PROBE)[-1] == 1024:
            return Family.SD2
        if _PROJ_PROBE in keyset and len(shape(_PROJ_PROBE)) == 2:
            return Family.SD2
        return Family.SD1
    return None
