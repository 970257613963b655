"""Per-block weights as users write them: SuperMerger/MBW comma lists."""

from __future__ import annotations

from .layout import BlockLayout


def parse_block_list(text: str, layout: BlockLayout) -> tuple[dict[str, float], float | None]:
    """``"0.1,0.2,..."`` -> ({block: value}, BASE or None).

    Takes one value per UNet block in block order (25 for SD1/SD2 and the SDXL refiner, 19 for
    SDXL), or one more with BASE first as SuperMerger writes them. An empty field raises
    ``ValueError`` naming its position (dropping it would shift every later block).
    """
    fields = text.replace(" ", "").split(",")
    if fields and fields[-1] == "" and len(fields) > 1:
        fields = fields[:-1]  # one trailing comma is harmless: nothing after it shifts
    n = len(layout.blocks)
    names = list(layout.blocks) if len(fields) == n else ["BASE", *layout.blocks]
    values = []
    for pos, v in enumerate(fields):
        where = f"position {pos + 1}" + (f" ({names[pos]})" if pos < len(names) and len(fields) in (n, n + 1) else "")
        if v == "":
            raise ValueError(
                f"--blocks has an empty field at {where}: every later weight would shift by one block; "
                "write a number there (0 keeps model A)"
            )
        try:
            values.append(float(v))
        except ValueError:
            raise ValueError(f"--blocks must be comma-separated numbers; {v!r} at {where} is not") from None
    if len(values) == n:
        return dict(zip(layout.blocks, values, strict=True)), None
    if len(values) == n + 1:
        return dict(zip(layout.blocks, values[1:], strict=True)), values[0]
    fam = layout.family.value.upper()
    raise ValueError(
        f"--blocks for {fam} takes {n} values ({layout.blocks[0]}..{layout.blocks[-1]}) "
        f"or {n + 1} with BASE first; got {len(values)}"
    )
