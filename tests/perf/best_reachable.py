"""An estimate of the best merge the toy zoo allows: the searches' best candidates re-scored on many
fresh prompts, chosen on one half of them and reported on the other.

Candidates are the `--top` trials by confirmed score of every study named (the search-quality runs
of tests/perf/search_quality.py, the main job's study) plus the baselines of the first study (the
four parents, the uniform merge, uniform:ties). Each is rendered once on the holdout split of a
prompt set the searches never saw. The best candidate is chosen on the first half of those prompts
and reported on the second half, with a paired 95 % interval against the best parent there, so
the reported figure is not the luckiest of many on the prompts that picked it.

    mergesearch prompts toyworld --n 384 --tags 5 --seed 21 -o runs/reach-s21.json
    .venv/bin/python tests/perf/best_reachable.py --prompts runs/reach-s21.json \
        --db runs/perf-search-quality/quality.db --studies quality-auto-s0-t80 quality-auto-s1-t80 ...

Takes about (candidates x prompts x 0.14 s) / threads on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=Path, required=True, help="prompt set JSON (its holdout split is scored)")
    p.add_argument("--db", type=Path, required=True, help="SQLite file of the studies")
    p.add_argument("--studies", nargs="+", required=True)
    p.add_argument("--top", type=int, default=1, help="candidates per study, by confirmed score")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "toyworld.yaml")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import optuna
    import torch

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from benchmark import load_prompt_set
    from merge_core import Source
    from search import trial_record as record
    from search.comparison import paired_bootstrap, verdict
    from search.config import load_config
    from search.evaluator import BenchmarkEvaluator
    from search.runner import default_evaluator, resolve_model_path
    from search.tasks import EvalTask

    storage = f"sqlite:///{args.db.resolve()}"
    candidates: dict[str, str] = {}  # label -> recipe JSON
    for i, name in enumerate(args.studies):
        trials = record.read_all(optuna.load_study(study_name=name, storage=storage))
        if i == 0:
            candidates.update({label: t.recipe for label, t in sorted(record.baselines(trials).items())})
        confirmed = [t for t in record.completed(trials) if t.confirm is not None and not t.baseline]
        for t in sorted(confirmed, key=lambda t: -t.confirmed_score)[: args.top]:
            candidates[f"{name} #{t.number}"] = t.recipe

    cfg = load_config(args.config)
    sources = [Source(path=str(resolve_model_path(cfg, m.path)), name=m.name) for m in cfg.ordered_models]
    prompt_set = load_prompt_set(args.prompts.resolve())
    ev = BenchmarkEvaluator(**{**dict(default_evaluator(cfg, "sd1", sources, prompt_set).kwargs), "device": "cpu"})
    n = len(ev.benchmarks["holdout"].prompts)
    scores: dict[str, tuple[float, ...]] = {}
    for i, (label, recipe) in enumerate(candidates.items()):
        t0 = time.perf_counter()
        res = ev.evaluate(EvalTask(task_id=i, trial_number=i, split="holdout", recipe=recipe))
        if res.status != "ok":
            raise SystemExit(f"{label}: {res.status}: {res.error}")
        scores[label] = tuple(res.prompt_scores)
        print(f"  {label}: {res.value:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    half = n // 2
    pick, report = slice(0, half), slice(half, n)
    parents = [label for label in scores if label.startswith("parent:")]
    merges = [label for label in scores if not label.startswith("parent:")]
    best = max(merges, key=lambda label: statistics.mean(scores[label][pick]))
    parent = max(parents, key=lambda label: statistics.mean(scores[label][report]))
    print(f"\n{len(candidates)} candidates on the holdout split of {args.prompts.name} ({n} prompts): chosen "
          f"on prompts 1-{half}, reported on prompts {half + 1}-{n}\n")
    print("| candidate | all prompts | choosing half | reporting half |")
    print("|---|---|---|---|")
    for label, s in sorted(scores.items(), key=lambda kv: -statistics.mean(kv[1])):
        print(f"| {label} | {statistics.mean(s):.3f} | {statistics.mean(s[pick]):.3f} | {statistics.mean(s[report]):.3f} |")
    d = paired_bootstrap(scores[best][report], scores[parent][report])
    print(f"\nbest reachable, estimated: {best}, {statistics.mean(scores[best][report]):.3f} on the reporting half; "
          f"against the best parent there: {verdict(d, parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
