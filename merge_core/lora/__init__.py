"""LoRA in kohya format (LoRA and LoCon): names, per-block ratios, baking, extraction, merging."""

from .apply import LoraSpec, apply_deltas, apply_loras_to_file, plan_loras
from .blocks import PRESETS, block_ratios
from .extract import extract_lora, merge_loras
from .file import LoraFile, LoraModule, read_lora, write_lora
from .names import LoraTarget, lora_targets

__all__ = [
    "PRESETS",
    "LoraFile",
    "LoraModule",
    "LoraSpec",
    "LoraTarget",
    "apply_deltas",
    "apply_loras_to_file",
    "block_ratios",
    "extract_lora",
    "lora_targets",
    "merge_loras",
    "plan_loras",
    "read_lora",
    "write_lora",
]
