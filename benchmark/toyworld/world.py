"""The toy world: small RGB images drawn by code from one tag per category.

A scene is one shape (colour, shape, size, position) on a plain background. Images are
drawn in batches with torch on a 4x supersampled grid and box-filtered down, so edges are
anti-aliased the same way every time. Everything is seeded: the same scenes and seed give
the same pixels on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

VOCAB_PATH = Path(__file__).with_name("vocab.yaml")
IMAGE_SIZE = 32
_SUPERSAMPLE = 4

# Pixel values (0..255) for every drawable tag; the vocabulary file names the tags.
_COLOURS = {
    "red": (220, 30, 30),
    "yellow": (235, 215, 30),
    "green": (30, 180, 50),
    "cyan": (30, 210, 220),
    "blue": (35, 60, 220),
    "magenta": (215, 40, 205),
}
_BACKGROUNDS = {
    "white background": (240, 240, 240),
    "black background": (15, 15, 15),
    "grey background": (128, 128, 128),
}
# Half extents in pixels. Small shapes span 11 px: smaller ones did not survive the 4x VAE
# downsampling as recognisable shapes (a 9 px square and circle decoded to the same blob).
_HALF_SIZE = {"small": 5.5, "large": 9.0}
_CENTRES = {  # (x, y) in pixels
    "top left": (9.5, 9.5),
    "top right": (22.5, 9.5),
    "bottom left": (9.5, 22.5),
    "bottom right": (22.5, 22.5),
}
_SHAPES = ("square", "circle", "triangle", "cross")


@cache
def vocabulary() -> dict[str, tuple[str, ...]]:
    """Categories -> tags, in file order (the order every index array uses)."""
    data = yaml.safe_load(VOCAB_PATH.read_text())
    cats = {str(c): tuple(str(t) for t in tags) for c, tags in data["categories"].items()}
    known = {"colour": _COLOURS, "shape": _SHAPES, "size": _HALF_SIZE, "position": _CENTRES,
             "background": _BACKGROUNDS}
    for cat, tags in cats.items():
        if cat not in known or set(tags) != set(known[cat]):
            raise ValueError(f"{VOCAB_PATH}: category {cat!r} does not match the tags the world can draw; "
                             f"expected {sorted(known.get(cat, ()))}")
    return cats


def categories() -> tuple[str, ...]:
    return tuple(vocabulary())


def all_tags() -> tuple[str, ...]:
    return tuple(t for tags in vocabulary().values() for t in tags)


def category_slices() -> dict[str, slice]:
    """Category -> its tags' columns in vocabulary column order (the order of `all_tags()`)."""
    out, start = {}, 0
    for cat, tags in vocabulary().items():
        out[cat] = slice(start, start + len(tags))
        start += len(tags)
    return out


def sample_indices(n: int, seed: int, probs: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    """Draw n scenes as an int array [n, n_categories] of tag indices (uniform unless `probs` given)."""
    rng = np.random.default_rng(seed)
    cols = []
    for cat, tags in vocabulary().items():
        p = None if probs is None or cat not in probs else np.asarray(probs[cat], dtype=float)
        if p is not None:
            p = p / p.sum()
        cols.append(rng.choice(len(tags), size=n, p=p))
    return np.stack(cols, axis=1).astype(np.int64)


def indices_to_scenes(idx: np.ndarray) -> list[dict[str, str]]:
    vocab = vocabulary()
    return [{cat: vocab[cat][int(i)] for cat, i in zip(vocab, row, strict=True)} for row in idx]


def scenes_to_indices(scenes: Sequence[Mapping[str, str]]) -> np.ndarray:
    vocab = vocabulary()
    out = np.zeros((len(scenes), len(vocab)), dtype=np.int64)
    for r, scene in enumerate(scenes):
        for c, (cat, tags) in enumerate(vocab.items()):
            if cat not in scene or scene[cat] not in tags:
                raise ValueError(f"scene {r}: category {cat!r} needs one of {list(tags)}, got {scene.get(cat)!r}")
            out[r, c] = tags.index(scene[cat])
    return out


def caption(scene: Mapping[str, str], order: Sequence[str] | None = None) -> str:
    """Comma-joined tags, as SD users write prompts (category order unless `order` given)."""
    return ", ".join(scene[c] for c in (order or vocabulary()) if c in scene)


def draw_batch(idx: np.ndarray, seed: int) -> torch.Tensor:
    """Draw scenes given as tag indices; returns float images [n, 3, 32, 32] in [0, 1].

    The seed drives small jitter (shape position +-1 px, size +-8 %, colour +-12 levels,
    background noise) so no two images are pixel-identical.
    """
    vocab = vocabulary()
    n = len(idx)
    g = torch.Generator().manual_seed(int(seed))
    col = {c: torch.as_tensor(idx[:, i]) for i, c in enumerate(vocab)}

    def table(cat: str, values: Mapping[str, object]) -> torch.Tensor:
        return torch.tensor([values[t] for t in vocab[cat]], dtype=torch.float32)[col[cat]]

    colour = table("colour", _COLOURS) + (torch.rand(n, 3, generator=g) - 0.5) * 24
    bg = table("background", _BACKGROUNDS) + (torch.rand(n, 3, generator=g) - 0.5) * 12
    half = table("size", _HALF_SIZE) * (1 + (torch.rand(n, generator=g) - 0.5) * 0.16)
    centre = table("position", _CENTRES) + (torch.rand(n, 2, generator=g) - 0.5) * 2
    shape = torch.as_tensor(idx[:, list(vocab).index("shape")])
    shape_names = vocab["shape"]

    s = _SUPERSAMPLE
    axis = (torch.arange(IMAGE_SIZE * s, dtype=torch.float32) + 0.5) / s
    dx = axis.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)
    dy = axis.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)
    h = half.view(-1, 1, 1)
    masks = {
        "square": (dx.abs() <= 0.85 * h) & (dy.abs() <= 0.85 * h),
        "circle": dx**2 + dy**2 <= h**2,
        "triangle": (dy >= -h) & (dy <= 0.8 * h) & (dx.abs() <= (dy + h) * 0.6),
        "cross": ((dx.abs() <= h) & (dy.abs() <= h / 3)) | ((dy.abs() <= h) & (dx.abs() <= h / 3)),
    }
    mask = torch.zeros(n, IMAGE_SIZE * s, IMAGE_SIZE * s)
    for k, name in enumerate(shape_names):
        mask = torch.where((shape == k).view(-1, 1, 1), masks[name].float(), mask)
    alpha = torch.nn.functional.avg_pool2d(mask.unsqueeze(1), s)  # [n, 1, 32, 32] coverage
    noise = (torch.rand(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g) - 0.5) * 8
    img = bg.view(n, 3, 1, 1) + noise
    img = img * (1 - alpha) + colour.view(n, 3, 1, 1) * alpha
    return (img / 255.0).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[n, 3, H, W] floats in [0, 1] -> PIL RGB images."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def draw(scenes: Sequence[Mapping[str, str]], seed: int) -> list[Image.Image]:
    """Draw scenes ({category: tag}) as PIL images, seeded."""
    return to_pil(draw_batch(scenes_to_indices(scenes), seed))
