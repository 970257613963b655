"""A grid of the rendered images, each captioned with its tags (found ones marked), for review."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from benchmark.score import Score


def contact_sheet(images: Sequence[Image.Image], score: Score | None = None, *, cell: int = 128,
                  columns: int | None = None, title: str = "") -> Image.Image:
    """Images in a grid of `cell`-pixel squares; with a score, each caption lists +found / -missed tags."""
    n = len(images)
    cols = columns or max(1, min(8, math.ceil(math.sqrt(n or 1))))
    rows = max(1, math.ceil(n / cols))
    font = ImageFont.load_default()
    line = 11
    caption = 2 * line + 4 if score is not None else 0
    head = line + 6 if title else 0
    sheet = Image.new("RGB", (cols * cell, head + rows * (cell + caption)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 3), title, fill=(230, 230, 230), font=font)
    for i, im in enumerate(images):
        x, y = (i % cols) * cell, head + (i // cols) * (cell + caption)
        sheet.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS), (x, y))
        if score is not None and i < len(score.prompts):
            p = score.prompts[i]
            words = [("+" if f else "-") + t for t, f in zip(p.tags, p.found, strict=True)]
            text = " ".join(words)
            per = max(1, cell // 6)
            for k, chunk in enumerate((text[:per], text[per:2 * per])):
                draw.text((x + 2, y + cell + 1 + k * line), chunk, fill=(200, 230, 200), font=font)
    return sheet
