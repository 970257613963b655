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
    p.add_argument("--study", metavar="NAME", help="which study of the run (after a --fork the run holds "
                    "several; default: the latest)")
    p.add_argument("--storage", help="read this storage URL instead of the one in run.json")
    p.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    import optuna

    from search.progress import format_summary, summarize
    from search.results import closing_table
    from search.rundir import RunError, read_run
    from search.storage import StorageError, make_storage

    try:
        info = read_run(args.run, args.study)
        storage = make_storage(args.storage or info.storage, must_exist=True)
        study = optuna.load_study(study_name=info.study_name, storage=storage)
    except (RunError, StorageError) as exc:
        print(f"mergesearch status: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"mergesearch status: no study {info.study_name!r} in {info.storage}", file=sys.stderr)
        return 2
    from search import trial_record as record

    config = study.user_attrs.get("config", {})
    budget = config.get("budget", {}) if isinstance(config, dict) else {}
    records = record.read_all(study)
    s = summarize(records, budget_trials=budget.get("trials"), budget_hours=budget.get("hours"))
    gaps = record.gaps(records)
    if args.json:
        from search.comparison import summary_lines

        print(json.dumps({"study": info.study_name, **s.__dict__, "finished": s.finished, "missing": gaps,
                          "result": summary_lines(records)}, indent=2))
        return 0
    print(f"study {info.study_name} ({study.user_attrs.get('family', '?')}, sampler "
          f"{study.user_attrs.get('sampler', '?')}, {len(records)} trials)")
    print(format_summary(s))
    others = [n for n in info.all_studies() if n != info.study_name]
    if others:
        print(f"other studies in this run: {', '.join(others)} (mergesearch status RUN --study NAME)")
    if s.pruned:
        print(f"pruning saved about {s.saved_seconds:.0f} s of rendering")
    top = sorted(record.completed(records), key=lambda r: r.objective, reverse=True)
    if top:
        penalised = record.penalised_study(records)
        print(f"\ntop {min(args.top, len(top))} by {record.OBJECTIVE if penalised else record.RECALL}:")
        for r in top[: args.top]:
            line = f"  trial {r.number:>5}  "
            if penalised:
                line += f"{record.OBJECTIVE} {r.objective:.4f}  "
            line += f"{record.RECALL} {r.search:.4f}" if r.search is not None else f"{record.RECALL} -"
            line += f"  confirm {r.confirm:.4f}" if r.confirm is not None else ""
            line += f"  holdout {r.holdout:.4f}" if r.holdout is not None else ""
            print(line + (f"  [{r.baseline}]" if r.baseline else ""))
    print()
    print(closing_table(records))
    return 0
