"""`mergesearch report RUN`: trial table (CSV, Parquet), PNG plots and a summary of a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="write a run's trial table and plots, and print the best trial against the parents",
        description=(
            "Write trials.csv and trials.parquet (state, duration, scores per category on both splits, "
            "params, and each model's derived coefficient per block) and three PNG plots: the optimisation "
            "history with the parents' and uniform merge's scores as reference lines, the best recipe's "
            "block weights, and per-category bars of the best trial against the parents."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run folder (runs/<name>/) or its run.json")
    parser.add_argument("--study", metavar="NAME", help="which study of the run (after a --fork the run holds "
                    "several; default: the latest)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write the files (default: RUN/report/)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from search.review.report import write_report
    from search.review.run import ReviewError, load_run

    try:
        files, summary = write_report(load_run(args.run, args.study), args.out)
    except ReviewError as exc:
        print(f"mergesearch report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable target: one line, no file half-written (each goes by temp + rename)
        where = exc.filename or args.out or "the report folder"
        print(f"mergesearch report: cannot write {where} ({exc.strerror or exc}); give --out DIR on a "
              "writable disk", file=sys.stderr)
        return 1
    print(summary)
    print()
    for name, path in files.model_dump().items():
        print(f"{name:15s} {path}")
    return 0
