"""Mixer apply cost.

1. Toy world: the apply step as a share of a whole trial (apply + render + tag + score), measured
   on the same worker in one run with the toy-world config's benchmark. Target: under 2 %.
2. Full-size SD1.5 layout (random weights, the real shapes) on this machine's CPU: milliseconds
   per apply of a 3-model per-block recipe, against a plain `load_state_dict` of one merged state
   dict into the same pipeline (what a tool that rebuilds weights per candidate does at best).
   With --sdxl the same for the SDXL layout (needs about 30 GB of RAM on CPU).

    .venv/bin/python tests/perf/mixer_speed.py [--trials 6] [--skip-sd15] [--sdxl] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def toy_share(trials: int, threads: int) -> None:
    from merge_core import Recipe, Source
    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import build_prompt_set, resolve_model_path
    from search.tasks import EvalTask

    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "toyworld.yaml")
    try:
        paths = [resolve_model_path(cfg, m.path) for m in cfg.ordered_models]
        tagger_options = dict(cfg.objective.tagger_options)
        origin = "trained zoo"
    except (FileNotFoundError, ValueError):
        from safetensors.torch import save_file

        from benchmark.toyworld import random_checkpoint
        from benchmark.toyworld.tagger import create_model

        tmp = Path(tempfile.mkdtemp())
        paths = [random_checkpoint(tmp / f"m{i}.safetensors", seed=i) for i in range(4)]
        model, _ = create_model()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "tagger.safetensors")
        tagger_options = {"weights": str(tmp / "tagger.safetensors")}
        origin = "random toy models (zoo not built)"
    o = cfg.objective
    ev = BenchmarkEvaluator(
        renderer="toyworld",
        sources=[str(p) for p in paths],
        prompt_set=build_prompt_set(cfg).model_dump_json(),
        tagger=o.tagger,
        tagger_options=tagger_options,
        render=o.render.model_dump(),
        batch_size=o.batch_size,
        device="cpu",
    )
    sources = tuple(Source(path=str(p), name=f"m{i}") for i, p in enumerate(paths))
    g = torch.Generator().manual_seed(0)
    shares, applies, totals = [], [], []
    for i in range(trials):
        weights = {
            w: tuple((torch.rand(len(paths) - 1, generator=g) * 0.6).tolist())
            for w in ev.mixer.layout.weight_ids
        }
        recipe = Recipe(family="sd1", method="affine", sources=sources, weights=weights)
        t0 = time.perf_counter()
        r = ev.evaluate(EvalTask(task_id=i, trial_number=i, recipe=recipe.model_dump_json()))
        total = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up
        applies.append(r.apply_seconds)
        totals.append(total)
        shares.append(r.apply_seconds / total)
    print(
        f"toy world ({origin}, {len(paths)} sources, {len(ev.benchmarks['search'].prompts)} prompts, "
        f"{o.render.steps} steps, {threads} thread(s)):"
    )
    print(
        f"  apply {statistics.median(applies) * 1e3:.1f} ms of a {statistics.median(totals):.2f} s trial "
        f"-> {statistics.median(shares):.2%} of the trial (target < 2 %)  [median of {len(shares)}]"
    )


def random_sources(renderer, n_sources: int, g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """``n_sources`` fp16 single-file state dicts (random values, the renderer's shapes), as release
    checkpoints are stored; non-float tensors are the pipeline's own."""
    from benchmark.single_file import to_single_file

    shapes = {
        m: {k: (v.shape, v.is_floating_point()) for k, v in mod.state_dict().items()}
        for m, mod in renderer.modules.items()
    }
    sources = []
    for _ in range(n_sources):
        mods = {
            m: {
                k: (
                    torch.randn(s, generator=g, dtype=torch.float32).to(torch.float16) * 0.02
                    if fp
                    else renderer.modules[m].state_dict()[k].clone()
                )
                for k, (s, fp) in d.items()
            }
            for m, d in shapes.items()
        }
        sources.append(to_single_file(mods, renderer.family, renderer.configs))
        del mods
    return sources


def full_size(family: str, device: str, n_sources: int, repeats: int) -> None:
    from benchmark import Renderer
    from merge_core import layout_for
    from search.mixer import Mixer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    renderer = Renderer(family, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    print(f"\n{family} full-size pipeline built in {time.perf_counter() - t0:.0f} s on {device}")
    g = torch.Generator().manual_seed(0)
    sources = random_sources(renderer, n_sources, g)
    t0 = time.perf_counter()
    mixer = Mixer(renderer, sources, family=family, source_dtype=torch.float16)
    print(
        f"  {n_sources} sources resident: {mixer.source_bytes / 2**30:.2f} GiB on {mixer.source_device} "
        f"(loaded and grouped in {time.perf_counter() - t0:.0f} s)"
    )
    ids = layout_for(family).weight_ids
    coeffs = [
        {w: tuple((torch.rand(n_sources, generator=g) * 0.6).tolist()) for w in ids}
        for _ in range(repeats + 1)
    ]
    times = [mixer.apply(c) for c in coeffs][1:]
    print(
        f"  Mixer.apply: {statistics.median(times) * 1e3:.0f} ms per apply (median of {repeats}, "
        f"min {min(times) * 1e3:.0f} ms), {torch.get_num_threads()} thread(s)"
    )
    # Reference in the same run: load one ready merged state dict into the same pipeline
    # (a lower bound for any approach that rebuilds a state dict per candidate).
    merged = sources[0]
    del sources
    gc.collect()
    ref = []
    for _ in range(2):
        t0 = time.perf_counter()
        renderer.load_state_dict(merged)
        ref.append(time.perf_counter() - t0)
    print(
        f"  reference: renderer.load_state_dict of one ready merged state dict: {min(ref) * 1e3:.0f} ms "
        f"-> apply/load = {statistics.median(times) / min(ref):.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads for the toy-world part (a Ray worker's)"
    )
    p.add_argument("--skip-toy", action="store_true")
    p.add_argument("--skip-sd15", action="store_true")
    p.add_argument("--sdxl", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if not args.skip_toy:
        toy_share(args.trials, args.threads)
    if not args.skip_sd15:
        full_size("sd1", args.device, 3, args.repeats)
    if args.sdxl:
        full_size("sdxl", args.device, 3, args.repeats)


if __name__ == "__main__":
    main()
