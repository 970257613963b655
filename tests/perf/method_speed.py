"""Speed and memory of the task-vector methods (TIES, DARE) in both engines.

Run as a script (not collected by pytest):

    .venv/bin/python tests/perf/method_speed.py [--parts files mixer toy cuda] [--methods ties dare]

files: three fp16 checkpoints with the real SD1.5 key layout (random values; base + two models)
  merged to a file by `mergesearch merge --mode ties|dare` and, in the same run, by sd-mecha's
  own methods (its venv, runs/perf-env, as in merge_speed.py):
    ties: ours `--density 0.2 --lambda 1` / sd-mecha `ties_sum(k=0.2)` of the task vectors added to
      the base (its add_difference_ties; it elects the sign by counting signs, ours by summed mass
      as the paper does)
    dare: ours `--drop 0.5 --lambda 1 --seed 0` / sd-mecha `dropout(probability=0.5, seed=0)` of
      the task vectors added to the base, its DARE (independent masks per model; it divides the
      kept deltas by how many models kept an element, where ours adds them as the paper does:
      the same passes over the data, a different convention).
  Wall time until the output is on disk and peak anonymous memory, each tool in its own process
  (merge_speed.measure). Targets: >= 3x faster than sd-mecha, peak anonymous memory < 1 GB.
  Both merge keys on os.cpu_count() threads (sd-mecha's `threads=`, our merge_workers()); ours
  also runs with MERGESEARCH_MERGE_THREADS=1 for the one-thread figure.
mixer: the Mixer's apply of a TIES recipe (density 0.2, per-block weights) on the full SD1.5
  pipeline on CPU, sources being those three files, against its linear (affine) apply.
toy: the Mixer's TIES apply as a share of a whole toy-world trial (apply + render + tag + score of
  the toy config's 64 search prompts), on one worker with one thread. Target: under 5 %.
cuda: when a CUDA GPU is present, the Mixer's TIES apply on full SD1.5 and SDXL layouts on it
  (random sources in memory); skipped with a message otherwise.
Figures go to --workdir/method_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_speed import make_checkpoint, measure, perf_env  # noqa: E402

OURS = {
    "ties": ["--mode", "ties", "--density", "0.2", "--lambda", "1"],
    "dare": ["--mode", "dare", "--drop", "0.5", "--lambda", "1", "--seed", "0"],
}
# sd-mecha 1.1.8's wrappers (add_difference_ties, dropout) fail on an unfinalised graph
# ('NoneType' object has no attribute 'identifier'), so its recipes are built from the same merge
# methods the wrappers call: task vectors, ties_sum / dropout over them, added to the base.
MECHA = {
    "ties": "linear.add_difference(base, ties.ties_sum(*deltas, k=0.2), alpha=1.0)",
    "dare": "linear.add_difference(base, ties.dropout(*deltas, probability=0.5, seed=0), alpha=1.0)",
}
MECHA_SCRIPT = r"""
import sys, torch, sd_mecha
from sd_mecha.extensions.builtin.merge_methods import linear, ties
torch.set_num_threads({threads})
out = sys.argv[1]
base, *models = [sd_mecha.model(p) for p in sys.argv[2:]]
deltas = [linear.subtract(m, base) for m in models]
recipe = {expr}
sd_mecha.merge(recipe, output=out, merge_dtype=torch.float32, output_dtype=torch.float16, threads={workers})
"""


def checkpoints(work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    paths = [work / f"sd1_{name}.safetensors" for name in ("base", "m1", "m2")]
    for seed, p in enumerate(paths, start=1):
        if not p.exists():
            t = time.perf_counter()
            make_checkpoint("sd1", p, seed)
            print(f"  wrote {p.name} ({p.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def warm(paths: list[Path]) -> None:
    """Read the sources once, untimed, so no tool pays for pulling them into the page cache."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def files(work: Path, methods: list[str], threads: int, repeat: int) -> dict:
    paths = checkpoints(work)
    mecha = perf_env()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MERGESEARCH_CACHE_DIR": str(work / "hash-cache")}
    out: dict = {}
    for method in methods:
        cmds = {
            "mergesearch": lambda o, m=method: [sys.executable, "-m", "search.cli", "merge", *map(str, paths),
                                                *OURS[m], "-o", str(o), "--overwrite", "--quiet"],
            "sd-mecha": lambda o, m=method: [str(mecha), "-c", MECHA_SCRIPT.format(
                threads=threads, workers=os.cpu_count(), expr=MECHA[m]), str(o), *map(str, paths)],
        }
        # ours on one thread too: sd-mecha merges keys on os.cpu_count() threads, and so do we by default
        cmds["mergesearch 1 thread"] = cmds["mergesearch"]
        envs = {"mergesearch 1 thread": {**env, "MERGESEARCH_MERGE_THREADS": "1"}}
        best: dict[str, dict] = {}
        for _ in range(repeat):
            for tool, cmd in cmds.items():
                warm(paths)
                o = work / f"out_{method}_{tool.replace(' ', '_')}.safetensors"
                r = measure(cmd(o), o, envs.get(tool, env))
                o.unlink(missing_ok=True)
                print(f"  {method:5s} {tool:21s} {r['seconds']:7.1f} s on disk ({r['process_seconds']:.1f} s process)"
                      f"  peak anon {r['peak_anon_gb']:.2f} GB", flush=True)
                if tool not in best or r["seconds"] < best[tool]["seconds"]:
                    best[tool] = r
        ratio = best["sd-mecha"]["seconds"] / best["mergesearch"]["seconds"]
        print(f"{method}: mergesearch {best['mergesearch']['seconds']:.1f} s, sd-mecha {best['sd-mecha']['seconds']:.1f} s"
              f" -> {ratio:.2f}x faster (target >= 3x); peak anon ours {best['mergesearch']['peak_anon_gb']:.2f} GB"
              f" (target < 1 GB), sd-mecha {best['sd-mecha']['peak_anon_gb']:.2f} GB; ours on one thread"
              f" {best['mergesearch 1 thread']['seconds']:.1f} s"
              f" ({best['sd-mecha']['seconds'] / best['mergesearch 1 thread']['seconds']:.2f}x)", flush=True)
        out[method] = {"results": best, "speedup_vs_sd_mecha": ratio}
    return out


def recipes(family: str, sources: tuple, g) -> dict:
    """An affine and a TIES recipe with the same random per-block weights (density 0.2, lambda 1)."""
    from merge_core import Recipe, layout_for

    ids = layout_for(family).weight_ids
    w = {i: tuple((0.2 + 0.6 * g.random(len(sources) - 1)).tolist()) for i in ids}
    return {
        "affine": Recipe(family=family, method="affine", sources=sources, weights=w),
        "ties": Recipe(family=family, method="ties", sources=sources, weights={i: (*v, 0.2, 1.0) for i, v in w.items()}),
    }


def mixer_apply(family: str, device: str, sources: list, repeats: int) -> dict:
    """Seconds per Mixer.apply of the affine and the TIES recipe on the full ``family`` pipeline."""
    import numpy as np
    import torch

    from benchmark import Renderer
    from merge_core import Source
    from search.mixer import Mixer

    t0 = time.perf_counter()
    renderer = Renderer(family, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    mixer = Mixer(renderer, sources, family=family, source_dtype=torch.float16)
    print(f"\n{family} on {device}: pipeline and {len(sources)} sources ({mixer.source_bytes / 2**30:.1f} GiB on "
          f"{mixer.source_device}) ready in {time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} thread(s)",
          flush=True)
    srcs = tuple(Source(path=str(s) if isinstance(s, (str, Path)) else f"/random{i}.safetensors", name=f"m{i}")
                 for i, s in enumerate(sources))
    out = {}
    for name, recipe in recipes(family, srcs, np.random.default_rng(0)).items():
        times = [mixer.apply(recipe) for _ in range(repeats + 1)][1:]  # the first one warms up
        out[name] = statistics.median(times)
        print(f"  Mixer.apply {name:6s}: {out[name]:.2f} s (median of {repeats})", flush=True)
    out["ties_over_affine"] = out["ties"] / out["affine"]
    print(f"  TIES apply / affine apply = {out['ties_over_affine']:.1f}", flush=True)
    del mixer, renderer
    return out


def toy_share(trials: int) -> dict:
    """The Mixer's TIES apply as a share of a whole toy-world trial (the toy config's search split)."""
    import numpy as np
    import torch

    from merge_core import Source
    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import build_prompt_set, default_evaluator, resolve_model_path
    from search.tasks import EvalTask

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "toyworld.yaml")
    sources = tuple(Source(path=str(resolve_model_path(cfg, m.path)), name=m.name) for m in cfg.ordered_models)
    spec = default_evaluator(cfg, "sd1", list(sources), build_prompt_set(cfg))
    ev = BenchmarkEvaluator(**{**dict(spec.kwargs), "device": "cpu"})
    g = np.random.default_rng(0)
    shares, applies, totals = [], [], []
    for i in range(trials + 1):
        recipe = recipes("sd1", sources, g)["ties"]
        t0 = time.perf_counter()
        r = ev.evaluate(EvalTask(task_id=i, trial_number=i, recipe=recipe.model_dump_json()))
        total = time.perf_counter() - t0
        if r.status != "ok":
            raise RuntimeError(f"toy trial {i}: {r.status}: {r.error}")
        if i == 0:
            continue  # warm-up
        applies.append(r.apply_seconds)
        totals.append(total)
        shares.append(r.apply_seconds / total)
    n = len(ev.benchmarks["search"].prompts)
    out = {"apply_s": statistics.median(applies), "trial_s": statistics.median(totals),
           "share": statistics.median(shares), "prompts": n}
    print(f"\ntoy world ({n} prompts, 1 thread): TIES apply {out['apply_s']:.2f} s of a {out['trial_s']:.1f} s trial "
          f"-> {out['share']:.1%} (target < 5 %) [median of {trials}]", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["files", "mixer", "toy", "cuda"],
                    choices=["files", "mixer", "toy", "cuda"])
    ap.add_argument("--methods", nargs="+", default=["ties", "dare"], choices=list(OURS))
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "perf-methods")
    ap.add_argument("--repeat", type=int, default=1, help="file merges per tool; the fastest counts")
    ap.add_argument("--repeats", type=int, default=2, help="Mixer applies per recipe (after one warm-up)")
    ap.add_argument("--trials", type=int, default=3, help="toy-world trials (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the file merges (as merge_speed.py)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()
    report: dict = {}
    if "files" in args.parts:
        print("TIES/DARE file merges of three SD1.5-sized checkpoints:", flush=True)
        report["files"] = files(args.workdir, args.methods, args.threads, args.repeat)
    if "mixer" in args.parts:
        import torch

        torch.set_num_threads(args.threads)
        report["mixer_cpu_sd1"] = mixer_apply("sd1", "cpu", [str(p) for p in checkpoints(args.workdir)],
                                              args.repeats)
    if "toy" in args.parts:
        report["toy"] = toy_share(args.trials)
    if "cuda" in args.parts:
        import torch

        if not torch.cuda.is_available():
            print("\ncuda: no CUDA GPU here; the Mixer's TIES apply on SD1.5 and SDXL on a GPU is skipped", flush=True)
        else:
            from mixer_speed import random_sources

            from benchmark import Renderer

            for family in ("sd1", "sdxl"):
                g = torch.Generator().manual_seed(0)
                sources = random_sources(Renderer(family, device="cpu", dtype=torch.float16), 3, g)
                report[f"mixer_cuda_{family}"] = mixer_apply(family, "cuda", sources, args.repeats)
                del sources
    if not args.keep:
        for p in args.workdir.glob("sd1_*.safetensors"):
            p.unlink()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "method_speed.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
