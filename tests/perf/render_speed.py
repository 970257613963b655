"""Rendering speed: one toy-world model renders a 64-prompt benchmark through the ordinary diffusers pipeline.

    .venv/bin/python tests/perf/render_speed.py [--model base] [--threads 1]

Target: under 20 s for 64 prompts (one image each, DDIM 20 steps, CFG 4) on a two-core CPU.
Reported beside the figure as a ratio against a reference measured in the same run: the same
number of batched UNet evaluations called directly (the irreducible denoising cost), so the
ratio shows what the pipeline adds (text encoding, scheduler, VAE decode, PIL conversion).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmark.toyworld import world, zoo
from benchmark.toyworld.evaluate import GUIDANCE, STEPS, eval_scenes, load_pipeline, render

TARGET_S = 20.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="base")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(zoo()[args.model])
    prompts = [world.caption(s) for s in eval_scenes(args.prompts)]
    seeds = list(range(args.prompts))
    render(pipe, prompts[:2], seeds[:2], steps=2)  # warm-up: allocator, lazy imports

    t0 = time.perf_counter()
    images = render(pipe, prompts, seeds, steps=STEPS, guidance=GUIDANCE)
    pipeline_s = time.perf_counter() - t0
    assert len(images) == args.prompts

    with torch.inference_mode():
        n = 2 * args.prompts  # CFG doubles the batch
        x = torch.randn(n, 4, 8, 8)
        ctx = torch.randn(n, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
        t0 = time.perf_counter()
        for t in pipe.scheduler.timesteps[:STEPS]:
            pipe.unet(x, t, ctx)
        unet_s = time.perf_counter() - t0

    ok = pipeline_s < TARGET_S
    print(f"render {args.prompts} prompts, {STEPS} DDIM steps, CFG {GUIDANCE}, {args.threads} thread(s): "
          f"{pipeline_s:.2f} s ({args.prompts / pipeline_s:.1f} images/s); target < {TARGET_S:.0f} s: "
          f"{'met' if ok else 'MISSED'}")
    print(f"reference: {STEPS} bare UNet calls at batch {2 * args.prompts}: {unet_s:.2f} s; "
          f"pipeline / reference = {pipeline_s / unet_s:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
