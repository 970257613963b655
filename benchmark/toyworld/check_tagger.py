"""Per-category accuracy of the toy CLIP tagger on freshly drawn world images.

    python -m benchmark.toyworld.check_tagger [--n 1000] [--seed 12345] [--weights PATH]

Images go through the registered "toyworld" tagger (the generic open_clip zero-shot path);
a category counts as right when its top-1 tag is the drawn one. Exits 1 when any category is
below --min (0.95).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from benchmark.toyworld import world

# Far from the training data's seeds (0..), so these images were never seen in training.
FRESH_SEED = 12345


def category_accuracy(probs: np.ndarray, scenes: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Top-1 accuracy per category of a [n_images, n_tags] matrix in vocabulary column order."""
    vocab = world.vocabulary()
    out = {}
    for cat, cols in world.category_slices().items():
        truth = np.array([vocab[cat].index(s[cat]) for s in scenes])
        out[cat] = float((probs[:, cols].argmax(1) == truth).mean())
    return out


def load_vocabulary():
    from benchmark.vocabulary import load_vocabulary as load

    return load(world.VOCAB_PATH)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.toyworld.check_tagger", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="images to draw (default 1000)")
    p.add_argument("--seed", type=int, default=FRESH_SEED, help=f"world seed (default {FRESH_SEED})")
    p.add_argument("--weights", type=Path, default=None, help="tagger weights (default: the committed ones)")
    p.add_argument("--min", type=float, default=0.95, help="required accuracy per category (default 0.95)")
    args = p.parse_args(argv)

    import torch

    from benchmark.toyworld.tagger import load_tagger

    torch.set_num_threads(1)
    try:
        tagger = load_tagger(args.weights)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    idx = world.sample_indices(args.n, seed=args.seed)
    scenes = world.indices_to_scenes(idx)
    images = world.to_pil(world.draw_batch(idx, seed=args.seed))
    acc = category_accuracy(tagger.tag(images, load_vocabulary()), scenes)
    print(f"toy CLIP tagger, {args.n} fresh images (seed {args.seed}), top-1 accuracy per category:")
    for cat, a in acc.items():
        print(f"  {cat:<12} {a:.3f}{'' if a >= args.min else '  < ' + str(args.min)}")
    print(f"  {'mean':<12} {np.mean(list(acc.values())):.3f}")
    return 0 if min(acc.values()) >= args.min else 1


if __name__ == "__main__":
    raise SystemExit(main())
