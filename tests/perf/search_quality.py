"""Search quality on the toy world: the `auto` sampler (baselines, Sobol start, GP) against random
search, several seeds each, with the same budget, config and workers. For each run: the holdout score
of the best-by-search trial among the first 20, 40 and 80 trials (the search never sees the holdout
prompts, so this is the gain a user would get).

    .venv/bin/python tests/perf/search_quality.py [--trials 80] [--seeds 0 1 2] [--workers 2]

Takes about (2 samplers x seeds x trials x ~5 s) / workers on this machine: run it in the background.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]


def best_holdout_at(trials, k: int, score_holdout) -> tuple[float, float, int] | None:
    done = [t for t in trials if t.number < k and t.state == TrialState.COMPLETE]
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    h = best.user_attrs.get("holdout")
    if h is None:  # became best only in hindsight (asynchronous completion): score it now
        h = score_holdout(best.user_attrs["recipe"])
    return best.value, h, best.number


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "toyworld.yaml")
    p.add_argument("--trials", type=int, default=80)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[20, 40, 80])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samplers", nargs="+", default=["auto", "random"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "perf-search-quality")
    args = p.parse_args()

    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import prepare, run_search
    from search.tasks import EvalTask

    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.out / 'quality.db').resolve()}"
    results: list[dict] = []
    scorer: dict = {}

    for seed in args.seeds:  # seed-major, so a cut-short run still holds paired comparisons
        for sampler in args.samplers:
            name = f"quality-{sampler}-s{seed}-t{args.trials}"
            cfg = load_config(args.config, overrides={
                "name": name, "sampler": sampler, "seed": seed, "budget": {"trials": args.trials},
                "runs_dir": str(args.out), "storage": storage,
                "workers.count": args.workers, "workers.backend": "ray" if args.workers > 1 else "local"})
            prepared = prepare(cfg)
            t0 = time.time()
            run = run_search(prepared)
            wall = time.time() - t0
            trials = run.study.get_trials()

            def score_holdout(recipe: str, prepared=prepared) -> float:
                if "ev" not in scorer:
                    kw = dict(prepared.evaluator.kwargs)
                    scorer["ev"] = BenchmarkEvaluator(**kw)
                r = scorer["ev"].evaluate(EvalTask(task_id=0, trial_number=-1, split="holdout", recipe=recipe))
                return float(r.value)

            row = {"sampler": sampler, "seed": seed, "wall_seconds": round(wall), "at": {}}
            for k in args.checkpoints:
                got = best_holdout_at(trials, k, score_holdout)
                if got:
                    row["at"][k] = {"search": got[0], "holdout": got[1], "trial": got[2]}
            base = [t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE]
            row["best_baseline_holdout"] = max(t.user_attrs.get("holdout", float("nan")) for t in base)
            results.append(row)
            print(json.dumps(row), flush=True)

    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    ks = args.checkpoints
    print(f"\nbest-by-search trial's HOLDOUT score after k trials (mean over seeds {args.seeds}; per seed)")
    print(f"{'sampler':8} " + " ".join(f"{'@' + str(k):>24}" for k in ks))
    for sampler in args.samplers:
        rows = [r for r in results if r["sampler"] == sampler]
        cells = []
        for k in ks:
            vals = [r["at"][k]["holdout"] for r in rows if k in r["at"]]
            each = "/".join(f"{v:.3f}" for v in vals)
            cells.append(f"{statistics.mean(vals):.3f} ({each})" if vals else "-")
        print(f"{sampler:8} " + " ".join(f"{c:>24}" for c in cells))
    base = max(r["best_baseline_holdout"] for r in results)
    print(f"best baseline (parent or uniform) on holdout: {base:.3f}")


if __name__ == "__main__":
    main()
