"""Key aliases: the spellings of one weight that different savers produce."""

from __future__ import annotations

_OLD_TE = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."


def normalise_key(key: str) -> str:
    """The canonical spelling of a checkpoint key.

    Old SD1 files (transformers < 4.x CLIP) lack ``text_model.`` inside the text encoder.
    """
    if key.startswith(_OLD_TE) and not key.startswith(_OLD_TE + "text_model."):
        return _OLD_TE + "text_model." + key[len(_OLD_TE) :]
    return key


def is_ema(key: str) -> bool:
    """EMA copies of the UNet (``model_ema.*``), kept apart from the weights used for inference."""
    return key.startswith(EMA_PREFIX)
