"""Render toy-world prompts with a checkpoint and measure per-category tag accuracy with the tagger.

    python -m benchmark.toyworld.evaluate [--n 64] [MODEL_OR_PATH ...]

A quick, self-contained check used while training and for the zoo picture; the search uses the
benchmark package's prompt sets, renderer and scores. Models render through an ordinary
diffusers StableDiffusionPipeline loaded from the single file via diffusers' converters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.toyworld import family, world
from benchmark.toyworld.single_file import from_single_file

EVAL_SEED = 777
STEPS = 20
GUIDANCE = 4.0


def load_pipeline(path: str | Path):
    """StableDiffusionPipeline over a toy-world single-file checkpoint (weights cast to fp32)."""
    from safetensors.torch import load_file

    unet, vae, te = family.build_unet(), family.build_vae(), family.build_text_encoder()
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    from_single_file(sd, unet, vae, te)
    return family.build_pipeline(unet.eval(), vae.eval(), te.eval())


def eval_scenes(n: int, seed: int = EVAL_SEED) -> list[dict[str, str]]:
    return world.indices_to_scenes(world.sample_indices(n, seed=seed))


@torch.inference_mode()
def render(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int = STEPS,
           guidance: float = GUIDANCE, batch_size: int = 64) -> list[Image.Image]:
    """One image per prompt; each prompt's noise comes from its own seed, independent of batching."""
    out: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch_size]]
        out += pipe(list(prompts[i:i + batch_size]), height=world.IMAGE_SIZE, width=world.IMAGE_SIZE,
                    num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return out


def score_model(pipe, tagger, scenes: Sequence[dict[str, str]], **render_kw) -> tuple[dict[str, float], list]:
    from benchmark.toyworld.check_tagger import category_accuracy, load_vocabulary

    prompts = [world.caption(s) for s in scenes]
    images = render(pipe, prompts, [EVAL_SEED + i for i in range(len(prompts))], **render_kw)
    acc = category_accuracy(tagger.tag(images, load_vocabulary()), scenes)
    acc["overall"] = float(np.mean(list(acc.values())))
    return acc, images


def main(argv: list[str] | None = None) -> int:
    from benchmark.toyworld import zoo
    from benchmark.toyworld.tagger import load_tagger

    p = argparse.ArgumentParser(prog="python -m benchmark.toyworld.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="zoo names or .safetensors paths (default: the whole zoo)")
    p.add_argument("--n", type=int, default=64, help="prompts (default 64)")
    p.add_argument("--guidance", type=float, default=GUIDANCE, help=f"CFG scale (default {GUIDANCE})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"DDIM steps (default {STEPS})")
    p.add_argument("--weights-dir", type=Path, default=None, help="folder with the zoo (default: committed)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        models = zoo(args.weights_dir)
        tagger = load_tagger(args.weights_dir / "tagger.safetensors" if args.weights_dir else None)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = {m: (models[m] if m in models else Path(m)) for m in (args.models or models)}
    scenes = eval_scenes(args.n)
    cats = [*world.categories(), "overall"]
    print(f"{'model':<14}" + "".join(f"{c:>12}" for c in cats))
    for name, path in chosen.items():
        acc, _ = score_model(load_pipeline(path), tagger, scenes, steps=args.steps, guidance=args.guidance)
        print(f"{name:<14}" + "".join(f"{acc[c]:>12.3f}" for c in cats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
