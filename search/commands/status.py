"""`mergesearch status RUN`: where a search stands, read from its storage alone (any host)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "status",
        help="show a search's progress and best trials from its storage",
        description="Print trials done/running/failed, the best score and its trial, trials per hour and the ETA "
                    "of a search, from the study storage alone (works while the search runs, from any host "
                    "that reaches the storage).",
    )
    p.add_argument("run", help="run folder (runs/<name>) or its run.json")
    p.add_argument("--storage", help="read this storage URL instead of the one in run.json")
    p.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import optuna
    from optuna.trial import TrialState

    from search.progress import format_summary, summarize
    from search.results import format_table, result_rows
    from search.rundir import RunError, read_run
    from search.storage import StorageError, make_storage

    try:
        info = read_run(args.run)
        storage = make_storage(args.storage or info.storage, must_exist=True)
        study = optuna.load_study(study_name=info.study_name, storage=storage)
    except (RunError, StorageError) as exc:
        print(f"mergesearch status: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"mergesearch status: no study {info.study_name!r} in {info.storage}", file=sys.stderr)
        return 2
    config = study.user_attrs.get("config", {})
    budget = config.get("budget", {})
    trials = study.get_trials(deepcopy=False)
    s = summarize(trials, budget_trials=budget.get("trials"), budget_hours=budget.get("hours"))
    if args.json:
        print(json.dumps({"study": info.study_name, **s.__dict__, "finished": s.finished}, indent=2))
        return 0
    print(f"study {info.study_name} ({study.user_attrs.get('family', '?')}, sampler "
          f"{study.user_attrs.get('sampler', '?')}, {len(trials)} trials)")
    print(format_summary(s))
    if s.pruned:
        print(f"pruning saved about {s.saved_seconds:.0f} s of rendering")
    top = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    if top:
        print(f"\ntop {min(args.top, len(top))}:")
        for t in top[: args.top]:
            h = t.user_attrs.get("holdout")
            label = t.user_attrs.get("baseline", "")
            print(f"  trial {t.number:>5}  {t.value:.4f}" + (f"  holdout {h:.4f}" if h is not None else "")
                  + (f"  [{label}]" if label else ""))
    print()
    print(format_table(result_rows(trials)))
    return 0
