"""The toy world's merges by method on a fresh holdout split: parents, linear, TIES, DARE, DARE-TIES.

Every row is one recipe built by the Mixer (no file) and scored by the benchmark's own
evaluator (renderer, tagger, scores) on the holdout split of a prompt set the demo never uses:

    mergesearch prompts toyworld --n 128 --tags 5 --seed 12 -o runs/holdout-s12.json
    .venv/bin/python tests/perf/methods_table.py --prompts runs/holdout-s12.json

Render settings, tagger and zoo come from configs/toyworld.yaml (DDIM 20 steps, CFG 4, tagger
toyworld). Merges use weight 1 (or 0.5) for each of the three specialists in every UNet block and
the text encoder; the VAE is held from the base in every row, as the search's baselines do.
Prints a Markdown table: overall tag recall (mean over prompts +- standard error) and the
recall per category. Takes about (rows x 128 images) of toy rendering: a few minutes on 1 thread.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rows() -> list[tuple[str, str, tuple[float, ...], dict[str, float]]]:
    """(label, method, per-specialist weights, method parameters) for every row of the table."""
    out = [(f"parent: {name}", "affine", tuple(1.0 if j == i else 0.0 for j in range(1, 4)), {})
           for i, name in enumerate(("base", "colorist", "sizer", "backdrop"))]
    out += [
        ("linear: base + all three task vectors at 1", "affine", (1.0, 1.0, 1.0), {}),
        ("linear: base + all three at 0.5", "affine", (0.5, 0.5, 0.5), {}),
    ]
    for density in (0.1, 0.2, 0.5):
        out.append((f"TIES: density {density:g}, lambda 1", "ties", (1.0, 1.0, 1.0),
                    {"density": density, "lambda": 1.0}))
    out.append(("TIES: density 0.2, lambda 1.5", "ties", (1.0, 1.0, 1.0), {"density": 0.2, "lambda": 1.5}))
    for drop in (0.5, 0.9):
        out.append((f"DARE: drop {drop:g}, lambda 1", "dare", (1.0, 1.0, 1.0), {"drop": drop, "lambda": 1.0}))
    out.append(("DARE: drop 0.5, lambda 0.5", "dare", (1.0, 1.0, 1.0), {"drop": 0.5, "lambda": 0.5}))
    out.append(("DARE-TIES: drop 0.5, lambda 1", "dare-ties", (1.0, 1.0, 1.0), {"drop": 0.5, "lambda": 1.0}))
    return out


def recipe(label, method_name, weights, values, sources, seed):
    from merge_core import Recipe, layout_for
    from merge_core.methods import get_method

    method = get_method(method_name)
    held = (0.0,) * len(weights)
    if method_name != "affine":  # held VAE: the method's identity values with zero weights give the base
        values = {**method.defaults(), **values}
    vec = {}
    for wid in layout_for("sd1").weight_ids:
        w = held if wid == "VAE" else weights
        vec[wid] = tuple(w) + tuple(values[p.name] for p in method.params)
    return Recipe(family="sd1", method=method.name, sources=sources, weights=vec,
                  seed=seed if method.random else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, required=True, help="prompt set JSON (its holdout split is scored)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "toyworld.yaml")
    p.add_argument("--seed", type=int, default=0, help="seed of the DARE drop masks")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, metavar="REGEX", help="score only the rows whose label matches")
    p.add_argument("--zoo", type=Path, default=None, metavar="DIR",
                   help="take the models from DIR/NAME.safetensors instead (a zoo rebuilt with --out DIR)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from benchmark import load_prompt_set
    from merge_core import Source
    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import default_evaluator, resolve_model_path
    from search.tasks import EvalTask

    cfg = load_config(args.config)
    sources = tuple(Source(path=str(args.zoo / f"{m.name}.safetensors" if args.zoo else resolve_model_path(cfg, m.path)),
                           name=m.name) for m in cfg.ordered_models)
    prompt_set = load_prompt_set(args.prompts.resolve())
    spec = default_evaluator(cfg, "sd1", list(sources), prompt_set)
    ev = BenchmarkEvaluator(**{**dict(spec.kwargs), "device": "cpu"})
    n = len(ev.benchmarks["holdout"].prompts)
    results = []
    for i, (label, method, weights, values) in enumerate(rows()):
        if args.only and not re.search(args.only, label):
            continue
        r = recipe(label, method, weights, values, sources, args.seed)
        t0 = time.perf_counter()
        res = ev.evaluate(EvalTask(task_id=i, trial_number=i, split="holdout", recipe=r.model_dump_json()))
        if res.status != "ok":
            raise SystemExit(f"{label}: {res.status}: {res.error}")
        results.append((label, res))
        print(f"  {label}: {res.value:.3f} +- {res.se:.3f} (apply {res.apply_seconds * 1e3:.0f} ms, "
              f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    cats = list(results[0][1].categories)
    print(f"\nToy world, holdout split of {args.prompts.name} ({n} prompts), tagger toyworld, "
          f"DDIM {ev.settings.steps}, CFG {ev.settings.cfg:g}, DARE seed {args.seed}\n")
    print("| merge | overall recall | " + " | ".join(cats) + " |")
    print("|---|---|" + "---|" * len(cats))
    for label, res in results:
        print(f"| {label} | {res.value:.3f} ± {res.se:.3f} | "
              + " | ".join(f"{res.categories[c]:.2f}" for c in cats) + " |")
    parents = [res for label, res in results if label.startswith("parent")]
    best_per_cat = sum(max(r.categories[c] for r in parents) for c in cats) / len(cats)
    print(f"\nbest parent per category, averaged over categories: {best_per_cat:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
