"""Per-block LoRA ratios in the LoRA-block-weight (LBW) layout that SuperMerger also reads.

A list starts with BASE (the text encoder(s)) and then names UNet blocks:

- SD1/SD2, 17 values: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11 (the
  blocks an attention-only LoRA touches); 26 values: BASE, IN00..IN11, M00, OUT00..OUT11.
- SDXL, 12 values: BASE, IN04, IN05, IN07, IN08, M00, OUT00..OUT05; 20 values: BASE,
  IN00..IN08, M00, OUT00..OUT08.

Blocks a short list does not name get 0, as SuperMerger's expansion does (a LoCon's
resnet-only blocks need the long form). Named presets are the LBW extension's defaults
(17 values). The ratio given beside the list multiplies every entry, as LBW does.
Source: shared/notes/supermerger-spec.md section 7.1; presets from the LBW README.
"""

from __future__ import annotations

from ..family import Family
from ..layout import layout_for

LBW17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
LBW12_XL = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")

PRESETS: dict[str, tuple[float, ...]] = {
    name: tuple(float(v) for v in values.split(","))
    for name, values in (
        ("NONE", "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"),
        ("ALL", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
        ("INS", "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0"),
        ("IND", "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0"),
        ("INALL", "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0"),
        ("MIDD", "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"),
        ("OUTD", "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"),
        ("OUTS", "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"),
        ("OUTALL", "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"),
        ("ALL0.5", ",".join(["0.5"] * 17)),
    )
}


def lbw_slots(family: Family | str, n: int) -> tuple[str, ...] | None:
    """The weight ids (``"TE"`` for BASE) that an ``n``-value list names, or None if ``n`` does not fit."""
    layout = layout_for(family)
    short = LBW12_XL if Family(family) == Family.SDXL else LBW17
    for slots in (short, ("BASE", *layout.blocks)):
        if len(slots) == n:
            return tuple("TE" if s == "BASE" else s for s in slots)
    return None


def block_ratios(family: Family | str, blocks: str | None, ratio: float = 1.0) -> dict[str, float]:
    """Weight id (UNet blocks and ``TE``) -> effective ratio, for ``blocks`` = a preset, a list or None.

    Raises ValueError naming the accepted lengths and presets.
    """
    layout = layout_for(family)
    ids = (*layout.blocks, "TE")
    if blocks is None or blocks.strip() == "":
        return dict.fromkeys(ids, ratio)
    text = blocks.strip()
    if text.upper() in PRESETS:
        values = PRESETS[text.upper()]
    else:
        try:
            values = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
        except ValueError:
            raise ValueError(
                f"LoRA blocks {blocks!r}: neither a preset ({', '.join(PRESETS)}) nor comma-separated numbers"
            ) from None
    slots = lbw_slots(family, len(values))
    if slots is None:
        fam = Family(family)
        lengths = "12 or 20" if fam == Family.SDXL else "17 or 26"
        hint = " (the named presets are 17-value SD1/SD2 lists)" if fam == Family.SDXL and text.upper() in PRESETS else ""
        raise ValueError(
            f"LoRA blocks for {fam.value.upper()} take {lengths} values with BASE first; got {len(values)}{hint}"
        )
    out = dict.fromkeys(ids, 0.0)
    for slot, v in zip(slots, values, strict=True):
        out[slot] = ratio * v
    return out
