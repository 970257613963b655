"""Model families and how to tell them apart from a checkpoint's keys and shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum


class Family(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


_UNET = "model.diffusion_model."
# Cross-attention context width of the first transformer block: 768 (CLIP-L) for SD1, 1024 (OpenCLIP-H) for SD2.
_CONTEXT_PROBE = _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def detect_family(keys: Iterable[str], shape: Callable[[str], tuple[int, ...]]) -> Family | None:
    """Family from normalised keys; ``None`` when the keys match no known family.

    Key names decide first (they survive pruning and the toy world's tiny shapes); the
    cross-attention width only breaks the tie for UNet-only files.
    """
    keyset = set(keys)
    if any(k.startswith("conditioner.embedders.") for k in keyset) or any(
        k.startswith(_UNET + "label_emb.") for k in keyset
    ):
        return Family.SDXL
    if any(k.startswith("cond_stage_model.model.") for k in keyset):
        return Family.SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in keyset):
        return Family.SD1
    if any(k.startswith(_UNET + "input_blocks.") for k in keyset):
        if _CONTEXT_PROBE in keyset and shape(_CONTEXT_PROBE)[-1] == 1024:
            return Family.SD2
        return Family.SD1
    return None
