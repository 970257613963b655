"""Search quality on the toy world: the `auto` sampler (baselines, Sobol start, GP) against random
search, several seeds each, with the same budget, config and workers. For each run and each
checkpoint k: the holdout score of the confirmed best among the first k trials (the study's reported
best: chosen over the search and confirm prompts; the search never sees the holdout prompts, so this
is the gain a user would get) with its paired 95 % interval against the best parent on holdout, and
the mean holdout score of the top `--top` trials by search score (it says how good the sampler's
candidates are, not how lucky the single best was). The default config is the main job's (per-group TIES);
`--config configs/toyworld-affine.yaml` measures the affine search the same way.

    .venv/bin/python tests/perf/search_quality.py [--trials 80] [--seeds 0 1 2] [--workers 2]
    .venv/bin/python tests/perf/search_quality.py --trials 80 --analyse    # re-read finished studies
    .venv/bin/python tests/perf/search_quality.py --trials 40 --checkpoints 20 40 --prompts 128
    .venv/bin/python tests/perf/search_quality.py --config configs/toyworld-affine.yaml --samplers auto

Takes about (2 samplers x seeds x trials x ~5 s) / workers on this machine: run it in the background.
Holdout scores the search did not already store are rendered here, once per trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from search import trial_record as record
from search.trial_record import TrialRecord

ROOT = Path(__file__).resolve().parents[2]


class HoldoutScores:
    """Holdout per-prompt scores of a trial: the ones the search stored, or rendered here once and cached."""

    def __init__(self, evaluate: Callable[[str], tuple[float, ...]]):
        self._evaluate = evaluate
        self._cache: dict[int, tuple[float, ...]] = {}

    def prompts(self, trial: TrialRecord) -> tuple[float, ...]:
        if trial.holdout_prompts:
            return tuple(trial.holdout_prompts)
        if trial.number not in self._cache:
            self._cache[trial.number] = self._evaluate(trial.recipe)
        return self._cache[trial.number]

    def __call__(self, trial: TrialRecord) -> float:
        if trial.holdout is not None and trial.holdout_prompts:
            return float(trial.holdout)
        return statistics.mean(self.prompts(trial))


def confirmed_best(trials: list[TrialRecord], k: int) -> TrialRecord | None:
    """The study's reported best among the first k trials (record.best restricted to them)."""
    return record.best([t for t in trials if t.number < k])


def ranked_by_search(trials: list[TrialRecord], k: int) -> list[TrialRecord]:
    done = [t for t in record.completed(trials) if t.number < k]
    return sorted(done, key=lambda t: t.objective, reverse=True)


def checkpoint_row(trials: list[TrialRecord], k: int, top: int, holdout: HoldoutScores) -> dict | None:
    from search.comparison import paired_bootstrap
    from search.space import METHOD_BASELINE_PREFIX

    ranked = ranked_by_search(trials, k)
    best = confirmed_best(trials, k)
    if not ranked or best is None:
        return None
    top_holdout = [holdout(t) for t in ranked[:top]]
    parents = [t for label, t in record.baselines(trials).items() if label.startswith("parent:")]
    parent = max(parents, key=holdout)
    d = paired_bootstrap(holdout.prompts(best), holdout.prompts(parent))
    row = {"search": best.objective, "confirmed": best.confirmed_score, "holdout": holdout(best),
           "trial": best.number, "baseline": best.baseline, "vs_parent": [d.diff, d.low, d.high],
           "beats_parent": d.low > 0, "best_parent": parent.baseline,
           "by_search_holdout": holdout(ranked[0]), f"top{top}_holdout": statistics.mean(top_holdout)}
    # the method's one-click merge (uniform:ties, ...): a best that beats the parent only through it is
    # no credit to the sampler, so the row says how the best compares with it too
    for label, t in record.baselines(trials).items():
        if label.startswith(METHOD_BASELINE_PREFIX) and label != best.baseline:
            m = paired_bootstrap(holdout.prompts(best), holdout.prompts(t))
            row["vs_method_baseline"] = [label, m.diff, m.low, m.high]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "toyworld.yaml")
    p.add_argument("--trials", type=int, default=80)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[20, 40, 80])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samplers", nargs="+", default=["auto", "random"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=None, help="prompts per split (default: the config's)")
    p.add_argument("--top", type=int, default=5, help="also report the mean holdout of the top N by search")
    p.add_argument("--analyse", action="store_true", help="read finished studies from --out, run nothing")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "perf-search-quality")
    args = p.parse_args()

    import optuna

    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import prepare, run_search
    from search.tasks import EvalTask

    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.out / 'quality.db').resolve()}"
    suffix = (f"-n{args.prompts}" if args.prompts else "") + (
        "" if args.config.stem == "toyworld" else f"-{args.config.stem}")
    results: list[dict] = []
    holdout_evaluator: list[BenchmarkEvaluator] = []  # built on first use; every run shares the benchmark

    for seed in args.seeds:  # seed-major, so a cut-short run still holds paired comparisons
        for sampler in args.samplers:
            name = f"quality-{sampler}-s{seed}-t{args.trials}{suffix}"
            overrides = {
                "name": name, "sampler": sampler, "seed": seed, "budget": {"trials": args.trials},
                "runs_dir": str(args.out), "storage": storage,
                "workers.count": args.workers, "workers.backend": "ray" if args.workers > 1 else "local"}
            if args.prompts:
                overrides["objective.n"] = args.prompts
            prepared = prepare(load_config(args.config, overrides=overrides))
            row = {"sampler": sampler, "seed": seed, "at": {}}
            if args.analyse:
                trials = record.read_all(optuna.load_study(study_name=name, storage=storage))
            else:
                t0 = time.time()
                trials = record.read_all(run_search(prepared).study)
                row["wall_seconds"] = round(time.time() - t0)

            def evaluate(recipe: str, prepared=prepared) -> tuple[float, ...]:
                if not holdout_evaluator:
                    holdout_evaluator.append(BenchmarkEvaluator(**dict(prepared.evaluator.kwargs)))
                task = EvalTask(task_id=0, trial_number=-1, split="holdout", recipe=recipe)
                return tuple(holdout_evaluator[0].evaluate(task).prompt_scores)

            holdout = HoldoutScores(evaluate)
            for k in args.checkpoints:
                got = checkpoint_row(trials, k, args.top, holdout)
                if got:
                    row["at"][k] = got
            baselines = record.baselines(trials).values()
            row["best_baseline_holdout"] = max(holdout(t) for t in baselines)
            results.append(row)
            print(json.dumps(row), flush=True)

    stem = "analysis" if args.analyse else "results"
    (args.out / f"{stem}{suffix}.json").write_text(json.dumps(results, indent=1))
    print_table(results, args.samplers, args.checkpoints, args.seeds, args.top)


def print_table(results: list[dict], samplers: list[str], ks: list[int], seeds: list[int], top: int) -> None:
    for metric, title in (("holdout", "confirmed best trial's HOLDOUT score"),
                          ("by_search_holdout", "best-by-search trial's HOLDOUT score (no confirmation)"),
                          (f"top{top}_holdout", f"mean HOLDOUT score of the top {top} trials by search")):
        print(f"\n{title} after k trials (mean over seeds {seeds}; per seed)")
        print(f"{'sampler':8} " + " ".join(f"{'@' + str(k):>24}" for k in ks))
        for sampler in samplers:
            rows = [r for r in results if r["sampler"] == sampler]
            cells = []
            for k in ks:
                vals = [r["at"][k][metric] for r in rows if k in r["at"]]
                each = "/".join(f"{v:.3f}" for v in vals)
                cells.append(f"{statistics.mean(vals):.3f} ({each})" if vals else "-")
            print(f"{sampler:8} " + " ".join(f"{c:>24}" for c in cells))
    base = max(r["best_baseline_holdout"] for r in results)
    print(f"best baseline (parents, uniform, uniform:<method>) on holdout: {base:.3f}")
    print("\nconfirmed best against the best parent on holdout, paired bootstrap 95 % (per seed):")
    for sampler in samplers:
        for k in ks:
            cells = []
            for r in (r for r in results if r["sampler"] == sampler and k in r["at"]):
                own = f" (the baseline {r['at'][k]['baseline']})" if r["at"][k]["baseline"] else ""
                cells.append(_cell(r["seed"], *r["at"][k]["vs_parent"]) + own)
            wins = sum(1 for r in results if r["sampler"] == sampler and k in r["at"] and r["at"][k]["beats_parent"])
            print(f"  {sampler:8} @{k:<4} beats the best parent in {wins} of {len(cells)}: " + "; ".join(cells))
    header = "\nconfirmed best against the method's one-click merge on holdout (per seed):"
    for sampler in samplers:
        for k in ks:
            found = [(r["seed"], r["at"][k]["vs_method_baseline"]) for r in results
                     if r["sampler"] == sampler and "vs_method_baseline" in r["at"].get(k, {})]
            if found:
                if header:
                    print(header)
                    header = ""
                label = found[0][1][0]
                print(f"  {sampler:8} @{k:<4} against {label}: " + "; ".join(_cell(seed, *v[1:]) for seed, v in found))


def _cell(seed: int, diff: float, low: float, high: float) -> str:
    """One seed's paired difference with its interval; * when the interval is above zero."""
    return f"s{seed} {diff:+.3f} [{low:+.3f}, {high:+.3f}]{' *' if low > 0 else ''}"


if __name__ == "__main__":
    main()
