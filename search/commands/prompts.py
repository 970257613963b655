"""`mergesearch prompts VOCAB --n N --tags M --seed S -o SET`: a fresh, fixed tag-prompt set."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prompts",
        help="make a tag-prompt set (search, holdout and confirm splits) from a tag vocabulary",
        description=(
            "Draw N prompts of M tags (at most one per category) with fixed per-prompt seeds from a "
            "vocabulary, deterministically from (vocabulary, N, M, seed), plus a disjoint held-out split. "
            "The JSON file carries its own hash; every score records it. Make a new set with another "
            "--seed to check a result on prompts the search never saw."
        ),
    )
    parser.add_argument("vocab", metavar="VOCAB",
                        help="vocabulary YAML file, or a shipped one by name (danbooru, toyworld)")
    parser.add_argument("--n", type=int, required=True, help="prompts in the search split")
    parser.add_argument("--holdout", type=int, default=None, help="prompts in the holdout split (default: N)")
    parser.add_argument("--confirm", type=int, default=0,
                        help="prompts in the confirm split that re-scores a search's leaders (default 0)")
    parser.add_argument("--tags", type=int, required=True, metavar="M", help="tags per prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    parser.add_argument("--prefix", default="", help="fixed text put before every prompt, e.g. '1girl'")
    parser.add_argument("--negative", default="", help="negative prompt used for every image")
    parser.add_argument("-o", "--out", required=True, metavar="SET", help="output JSON file")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from benchmark import BenchmarkError, load_vocabulary, make_prompt_set

    try:
        vocab = load_vocabulary(args.vocab)
        ps = make_prompt_set(vocab, args.n, args.tags, args.seed, holdout=args.holdout,
                             confirm=args.confirm, prefix=args.prefix, negative=args.negative)
        path = ps.save(args.out)
    except BenchmarkError as exc:
        print(f"mergesearch prompts: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable or missing target folder: one line, nothing written
        print(f"mergesearch prompts: -o {args.out}: cannot write ({exc.strerror or exc}); choose a writable "
              "folder", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {len(v)}" for k, v in ps.splits.items())
    print(f"wrote {path}  hash {ps.hash}  vocabulary {vocab.name} ({vocab.hash})  prompts: {counts}")
    for text in ps.texts("search")[:3]:
        print(f"  {text}")
    return 0
