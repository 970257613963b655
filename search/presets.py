"""Named block-group presets for the search space (`space.preset` in the config): data, one registry.

A preset turns a family's UNet block list (merge_core.layout_for(family).blocks) into groups, one
searched dimension per (group, partner model); the components (TE, VAE) stay as `space.components`
says (searched as their own group, or held from a model). Presets are written as rules over the
block list, so every layout (SD1/SD2: IN00..IN11, M00, OUT00..OUT11; SDXL: IN00..IN08, M00,
OUT00..OUT08) gets them without a table per family:

- `in-mid-out`: SuperMerger's three coarse groups IN (every input block), MID, OUT.
- `depth4`: four depth levels by feature resolution, the encoder level paired with the decoder
  level it skips to. The input blocks after conv_in come three per resolution level (two ResBlocks
  or ResBlock+attention pairs, then the downsampler, which belongs to the next level's resolution),
  so level L = IN[3L..3L+2] with its mirror OUT[n-3L-3..n-3L-1]. SD1/SD2 have four levels and the
  middle block joins the deepest; SDXL has three and the middle block is the fourth.
- `blocks`: every block alone (25 for SD1/SD2, 19 for SDXL).
- `*-attn-conv`: the same groups, each split into its attention part (the SpatialTransformer:
  proj_in/out, its norm and transformer_blocks: self/cross attention and feed-forward) and the rest
  (ResBlocks, up/downsamplers, conv_in/out, time embedding) -- the split evolutionary SDXL merges
  searched (Akiba et al. 2024, "Evolutionary Optimization of Model Merging Recipes"). The attention
  part of a group becomes a per-key rule in the recipe (merge_core.elemental: later entries win over
  the block weight), so both merge engines apply it alike.

Unknown names fail with the closest match (`get_preset`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

# Substrings of single-file UNet keys that belong to a SpatialTransformer (ldm naming, SD1/SD2/SDXL):
# ResBlocks name their norms in_layers.0 / out_layers.0, so ".norm." is the transformer's GroupNorm.
ATTENTION_ELEMENTS = ("transformer_blocks", "proj_in", "proj_out", ".norm.")
KIND_SUFFIX = {"attn": "_attn", "conv": "_conv"}

Groups = dict[str, tuple[str, ...]]


def _in_mid_out(blocks: tuple[str, ...]) -> Groups:
    return {"IN": tuple(b for b in blocks if b.startswith("IN")), "MID": tuple(b for b in blocks if b.startswith("M")),
            "OUT": tuple(b for b in blocks if b.startswith("OUT"))}


def _depth4(blocks: tuple[str, ...]) -> Groups:
    ins = [b for b in blocks if b.startswith("IN")]
    mids = [b for b in blocks if b.startswith("M")]
    outs = [b for b in blocks if b.startswith("OUT")]
    if len(ins) % 3 or len(ins) != len(outs):
        raise ValueError(f"preset depth4 needs input blocks in threes mirrored by output blocks; this layout has "
                         f"{len(ins)} input and {len(outs)} output blocks")
    levels = len(ins) // 3
    groups: Groups = {}
    for lv in range(levels):
        enc = ins[3 * lv:3 * lv + 3]
        dec = outs[len(outs) - 3 * lv - 3:len(outs) - 3 * lv]
        groups[f"D{lv}"] = tuple(enc + dec)
    if levels >= 4:
        groups[f"D{levels - 1}"] = tuple(ins[3 * (levels - 1):] + mids + outs[:3])
    else:
        groups[f"D{levels}"] = tuple(mids)
    if len(groups) != 4:
        raise ValueError(f"preset depth4: this layout gives {len(groups)} depth levels, not 4")
    return groups


def _blocks(blocks: tuple[str, ...]) -> Groups:
    return {b: (b,) for b in blocks}


@dataclass(frozen=True)
class Preset:
    """A named grouping of UNet blocks; `split` = each group searched apart for attention and the rest."""

    name: str
    description: str
    rule: Callable[[tuple[str, ...]], Groups]
    split: bool = False

    def groups(self, blocks: tuple[str, ...]) -> Groups:
        """{group name: block ids} over `blocks` (each block in exactly one group, in layout order)."""
        return self.rule(tuple(blocks))


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


for _name, _desc, _rule in (
    ("in-mid-out", "SuperMerger's IN / MID / OUT", _in_mid_out),
    ("depth4", "four depth levels (encoder level with the decoder level it skips to)", _depth4),
    ("blocks", "every block alone (25 for SD1/SD2, 19 for SDXL)", _blocks),
):
    register(Preset(_name, _desc, _rule))
    register(Preset(f"{_name}-attn-conv", f"{_desc}; attention and convolution apart in each group", _rule, split=True))


def get_preset(name: str) -> Preset:
    """The registered preset `name`; ValueError naming the closest registered one otherwise."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown preset {name!r}; {hint}presets are {', '.join(PRESETS)}")
    return PRESETS[name]


def is_attention_key(key: str) -> bool:
    """Whether a single-file UNet key belongs to the attention part (see ATTENTION_ELEMENTS)."""
    return any(e in key for e in ATTENTION_ELEMENTS)
