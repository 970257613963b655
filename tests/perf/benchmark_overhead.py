"""Overhead of the benchmark over calling diffusers directly, on the toy world (ratio in one run).

Reference: a diffusers StableDiffusionPipeline loaded with `from_single_file`, called batch by batch
on the split's prompts with one seeded torch.Generator per prompt. Measured against it, in
alternating rounds (A B A B ...) so machine load hits both alike:
  render     Renderer.render_batches (our settings -> pipeline call path), same prompts/batch size
  benchmark  Benchmark.evaluate: rendering + tagging + scoring, what a search trial costs
Target: benchmark images/s >= 0.95 x reference images/s.

    .venv/bin/python tests/perf/benchmark_overhead.py [--prompts 48] [--batch 16] [--steps 20] [--rounds 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline

    from benchmark import Benchmark, Renderer, RenderSettings, get_tagger, load_vocabulary, make_prompt_set
    from benchmark.toyworld import random_checkpoint

    try:
        from benchmark.toyworld import zoo

        ckpt, what = zoo()["base"], "toy-world base (trained)"
    except (FileNotFoundError, ImportError):
        ckpt, what = random_checkpoint(Path("/tmp/toy-perf.safetensors"), seed=0), "toy-world random weights"
    try:
        tagger, tname = get_tagger("toyworld", device=args.device), "toyworld (trained)"
    except FileNotFoundError:  # weights not trained yet: the same architecture with random weights costs the same
        from benchmark.clip_tagger import ClipTagger
        from benchmark.toyworld import tagger as toy_tagger

        tagger = ClipTagger(toy_tagger.register(), None, device=args.device, templates=toy_tagger.TEMPLATES)
        tname = "toyworld architecture, random weights"
    vocab = load_vocabulary("toyworld")
    ps = make_prompt_set(vocab, args.prompts, 3, seed=0)
    settings = RenderSettings(steps=args.steps, scheduler="native", cfg=7.0)

    renderer = Renderer("toyworld", device=args.device)
    renderer.load_checkpoint(ckpt)
    ref = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(renderer.config_dir), local_files_only=True,
                                                   safety_checker=None, torch_dtype=torch.float32).to(args.device)
    ref.set_progress_bar_config(disable=True)
    prompts = ps.prompts("search")
    texts, seeds = [p.text() for p in prompts], [p.seed for p in prompts]

    batches = [(texts[i:i + args.batch], seeds[i:i + args.batch]) for i in range(0, len(texts), args.batch)]

    @torch.inference_mode()
    def reference(i: int):
        t, sd = batches[i]
        gens = [torch.Generator(args.device).manual_seed(x) for x in sd]
        return ref(prompt=t, num_inference_steps=args.steps, guidance_scale=7.0, generator=gens,
                   height=32, width=32, output_type="pil").images

    bench = Benchmark(ps, "search", tagger, settings, batch_size=args.batch)
    state: dict[str, object] = {}

    def render(i: int):
        if i == 0:
            state["render"] = renderer.render_batches(prompts, settings, args.batch)
        return next(state["render"])

    def benchmark(i: int):
        if i == 0:
            state["bench"] = bench.evaluate_batches(renderer)
        return next(state["bench"])

    runs = {"reference": reference, "render": render, "benchmark": benchmark}
    names = list(runs)
    for name in names:  # warm-up: first calls allocate and fill caches
        for i in range(len(batches)):
            runs[name](i)
    wall = {k: 0.0 for k in runs}
    cpu = {k: 0.0 for k in runs}
    # Interleave batch by batch, rotating the order, so a burst of load from other processes on this
    # machine hits all three alike; CPU time (one thread) is reported beside wall time.
    k = 0
    for _ in range(args.rounds):
        for i in range(len(batches)):
            for name in names[k % 3:] + names[:k % 3]:
                t, c = time.perf_counter(), time.process_time()
                runs[name](i)
                wall[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
            k += 1
    n = args.rounds * len(texts)
    print(f"toy world, {what}; tagger {tname}; {len(texts)} prompts, batch {args.batch}, {args.steps} steps, "
          f"device {args.device}, {args.threads} thread(s), {args.rounds} rounds interleaved per batch")
    ratios = []
    for name in names:
        r_wall, r_cpu = wall["reference"] / wall[name], cpu["reference"] / cpu[name]
        ratios.append(r_wall)
        print(f"  {name:<10} {n / wall[name]:7.2f} images/s wall ({n / cpu[name]:6.2f} per CPU-second)   "
              f"ratio to reference: wall {r_wall:.3f}, cpu {r_cpu:.3f}")
    print("target benchmark/reference >= 0.95:", "met" if ratios[-1] >= 0.95 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
