"""Contact sheet of the zoo: prompts, the world's own drawing, and each model's render.

    python -m benchmark.toyworld.contact_sheet [--out docs/toyworld_zoo.png] [--n 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from benchmark.toyworld import world

CELL = 96
TEXT_W = 300
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "toyworld_zoo.png"


def sheet(prompts: list[str], columns: dict[str, list[Image.Image]]) -> Image.Image:
    """Rows = prompts; first column the prompt text, then one column per named image list."""
    font = ImageFont.load_default()
    head = 22
    img = Image.new("RGB", (TEXT_W + CELL * len(columns), head + CELL * len(prompts)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), "prompt", fill="black", font=font)
    for c, name in enumerate(columns):
        draw.text((TEXT_W + c * CELL + 6, 4), name, fill="black", font=font)
    for r, prompt in enumerate(prompts):
        y = head + r * CELL
        lines, line = [], ""
        for tag in prompt.split(", "):
            if len(line) + len(tag) > 34:
                lines.append(line.rstrip(", "))
                line = ""
            line += tag + ", "
        lines.append(line.rstrip(", "))
        for i, text in enumerate(lines):
            draw.text((6, y + 8 + 14 * i), text, fill="black", font=font)
        for c, images in enumerate(columns.values()):
            img.paste(images[r].resize((CELL - 4, CELL - 4), Image.NEAREST), (TEXT_W + c * CELL + 2, y + 2))
    return img


def main(argv: list[str] | None = None) -> int:
    from benchmark.toyworld import zoo
    from benchmark.toyworld.evaluate import EVAL_SEED, eval_scenes, load_pipeline, render

    p = argparse.ArgumentParser(prog="python -m benchmark.toyworld.contact_sheet", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    p.add_argument("--n", type=int, default=8, help="prompts (rows), default 8")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with the zoo (default: committed)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        models = zoo(args.weights_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scenes = eval_scenes(args.n, seed=EVAL_SEED + 1)
    prompts = [world.caption(s) for s in scenes]
    seeds = [EVAL_SEED + 1000 + i for i in range(args.n)]
    columns = {"world": world.draw(scenes, seed=EVAL_SEED)}
    for name, path in models.items():
        columns[name] = render(load_pipeline(path), prompts, seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.png")
    sheet(prompts, columns).save(tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
