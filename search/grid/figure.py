"""The labelled grid image of one Z value (pure: cell images and labels in, one PIL image out)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_PAD = 4


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text_block(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    chars = max(4, int(width / max(font.getlength("x"), 1)))
    return textwrap.wrap(text, chars) or [""]


def grid_image(images: dict[tuple[int, int], Image.Image], x_labels: Sequence[str], y_labels: Sequence[str], *,
               title: str = "", notes: dict[tuple[int, int], str] | None = None, cell: int = 128) -> Image.Image:
    """Columns = X values, rows = Y values; each image scaled to ``cell`` px (nearest, so small
    images stay crisp); ``notes`` (e.g. tag recall) printed under each image."""
    notes = notes or {}
    font, small = _font(max(10, cell // 10)), _font(max(9, cell // 12))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.size * 1.25) if hasattr(font, "size") else 12
    head_lines = max(len(_text_block(probe, t, cell, font)) for t in x_labels) if any(x_labels) else 0
    left = max((int(font.getlength(t)) for t in y_labels if t), default=0)
    left = min(left, 2 * cell) + 2 * _PAD if left else 0
    note_h = line_h if notes else 0
    title_lines = textwrap.wrap(title, max(20, int((left + len(x_labels) * (cell + _PAD)) / max(font.getlength("x"), 1))))
    top = len(title_lines) * line_h + head_lines * line_h + _PAD * 2
    w = left + len(x_labels) * (cell + _PAD) + _PAD
    h = top + len(y_labels) * (cell + note_h + _PAD) + _PAD
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((_PAD, _PAD + i * line_h), line, fill="black", font=font)
    y0 = _PAD + len(title_lines) * line_h
    for ix, label in enumerate(x_labels):
        for j, line in enumerate(_text_block(draw, label, cell, font)):
            x = left + ix * (cell + _PAD) + _PAD + (cell - font.getlength(line)) / 2
            draw.text((x, y0 + j * line_h), line, fill="black", font=font)
    for iy, label in enumerate(y_labels):
        y = top + iy * (cell + note_h + _PAD)
        lines = textwrap.wrap(label, max(4, int((left - 2 * _PAD) / max(font.getlength("x"), 1)))) if left else []
        for j, line in enumerate(lines[: max(1, cell // line_h)]):
            draw.text((_PAD, y + cell / 2 - len(lines) * line_h / 2 + j * line_h), line, fill="black", font=font)
        for ix in range(len(x_labels)):
            x = left + ix * (cell + _PAD) + _PAD
            im = images.get((ix, iy))
            if im is not None:
                canvas.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (int(x), int(y)))
            note = notes.get((ix, iy))
            if note:
                draw.text((x + (cell - small.getlength(note)) / 2, y + cell + 1), note, fill="#333333", font=small)
    return canvas
