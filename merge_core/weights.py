"""Per-block weights as users write them: SuperMerger/MBW comma lists."""

from __future__ import annotations

from .layout import BlockLayout


def parse_block_list(text: str, layout: BlockLayout) -> tuple[dict[str, float], float | None]:
    """``"0.1,0.2,..."`` -> ({block: value}, BASE or None).

    Takes one value per UNet block in block order (25 for SD1/SD2, 19 for SDXL), or one
    more with BASE first as SuperMerger writes them.
    """
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"--blocks must be comma-separated numbers, got {text!r}") from None
    n = len(layout.blocks)
    if len(values) == n:
        return dict(zip(layout.blocks, values, strict=True)), None
    if len(values) == n + 1:
        return dict(zip(layout.blocks, values[1:], strict=True)), values[0]
    fam = layout.family.value.upper()
    raise ValueError(
        f"--blocks for {fam} takes {n} values ({layout.blocks[0]}..{layout.blocks[-1]}) "
        f"or {n + 1} with BASE first; got {len(values)}"
    )
