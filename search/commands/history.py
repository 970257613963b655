"""`mergesearch history [QUERY]`: find earlier merges, repairs, LoRA files and exports."""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
Every merge, repair, lora and export appends a row to the merge history: time, command, output,
sources with their sha256, method, recipe and details. QUERY words must all match (AND); OR joins
alternatives; matching is case-insensitive over command, output, source names/paths/hashes, method
and details. The history is $MERGESEARCH_HISTORY or ~/.cache/mergesearch/history.sqlite
(MERGESEARCH_HISTORY=0 turns it off).

examples:
  mergesearch history                      # the latest 20
  mergesearch history colorist ties        # both words
  mergesearch history export OR lora
  mergesearch history --show 12 --recipe > again.json && mergesearch merge --recipe again.json -o again.safetensors
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("history", help="search the history of merges, repairs, LoRAs and exports",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="*", metavar="QUERY", help="words to find (AND; OR between alternatives)")
    p.add_argument("-n", "--limit", type=int, default=20, help="at most this many rows, newest first (0 = all)")
    p.add_argument("--show", type=int, metavar="ID", help="print one entry in full (JSON)")
    p.add_argument("--recipe", action="store_true", help="with --show: print only its recipe JSON (for merge --recipe)")
    p.add_argument("--json", action="store_true", help="print matching rows as JSON lines")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from merge_core.history import get, history_path, search

    if args.show is not None:
        try:
            entry = get(args.show)
        except KeyError as exc:
            print(f"mergesearch history: {exc.args[0]}", file=sys.stderr)
            return 1
        if args.recipe:
            if entry.recipe is None:
                print(f"mergesearch history: entry {entry.id} ({entry.command}) has no recipe", file=sys.stderr)
                return 1
            print(json.dumps(entry.recipe, indent=2))
        else:
            print(entry.model_dump_json(indent=2))
        return 0
    path = history_path()
    if path is None:
        print("mergesearch history: turned off (MERGESEARCH_HISTORY=0)", file=sys.stderr)
        return 1
    rows = search(" ".join(args.query), limit=args.limit or None)
    if args.json:
        for e in rows:
            print(e.model_dump_json())
        return 0
    if not rows:
        print(f"no entries{' match ' + repr(' '.join(args.query)) if args.query else ''} in {path}")
        return 0
    for e in rows:
        srcs = ", ".join(f"{s.name}[{(s.sha256 or '?')[:10]}]" for s in e.sources)
        extra = " ".join(f"{k}={v}" for k, v in e.details.items())
        method = f" {e.method}" if e.method else ""
        print(f"{e.id:>5}  {e.time}  {e.command}{method}  {e.output}\n       from {srcs}" + (f"  {extra}" if extra else ""))
    return 0
