"""`mergesearch export RUN`: the best (or any completed) trial as a .safetensors with provenance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _relocation(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=PATH, e.g. --source base=/models/base.safetensors")
    return name, Path(path)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a trial's merge as a .safetensors checkpoint with its provenance",
        description=(
            "Replay a completed trial's recipe from the source files through the streaming merge writer "
            "(refusing if a source changed since the search scored it) and write a single-file checkpoint "
            "that A1111, Forge and ComfyUI load. Its metadata holds A1111's merge recipe keys and the full "
            "provenance: study, trial, scores, benchmark and prompt-set hashes, tagger, sampler and recipe."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run folder (runs/<name>/) or its run.json")
    parser.add_argument("--study", metavar="NAME", help="which study of the run (after a --fork the run holds "
                    "several; default: the latest)")
    parser.add_argument("--trial", default="best", metavar="best|N",
                        help="which trial: 'best' (default) or a completed trial's number")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.safetensors", help="output file")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"), default=None,
                        help="output dtype (default: the recipe's, as searched; fp8 for the UNet only)")
    parser.add_argument("--repair-with", type=Path, default=None, metavar="B",
                        help="contact-merge the export toward checkpoint B (low-rank repair of distortions)")
    parser.add_argument("--rank", type=int, default=4, metavar="R", help="rank of the contact merge (default 4)")
    parser.add_argument("--source", type=_relocation, action="append", default=[], metavar="NAME=PATH",
                        help="a source checkpoint that moved since the search (its sha256 must still match)")
    parser.add_argument("--verify", action="store_true",
                        help="reload the export, re-run the benchmark's search split and check the score "
                             "matches the trial's (within the output dtype's rounding)")
    parser.add_argument("--adjust", metavar="8 VALUES", default=None,
                        help="Adjust the export: IN,OUT,OUT2,CONT,BRI,COL1,COL2,COL3 (detail, contrast, brightness, "
                             "colour through the UNet's first and last layers; about +-5)")
    parser.add_argument("--vae", type=Path, default=None, metavar="FILE",
                        help="bake this VAE into the export (single-file VAE, .pt read weights-only, or a "
                             "diffusers VAE folder); its sha256 goes into the metadata")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads for the merge and --verify (default: half the CPU cores, at most "
                             "4; torch's own default oversubscribes a busy CPU: 260 s against 12 s for one "
                             "thread on a loaded 2-core machine)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(handler=run)
    return parser


def default_threads() -> int:
    """Half the CPU cores (the other half stays for whatever else runs), 1 to 4."""
    import os

    return max(1, min(4, (os.cpu_count() or 2) // 2))


def run(args: argparse.Namespace) -> int:
    from benchmark import BenchmarkError
    from merge_core import CheckpointError
    from search.review.export import export_trial
    from search.review.run import ReviewError, load_run

    user_errors = (ReviewError, CheckpointError, BenchmarkError, OSError)
    if args.threads is not None and args.threads < 1:
        print(f"mergesearch export: --threads {args.threads}: give 1 or more", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads or default_threads())

    try:
        folder = load_run(args.run, args.study)
        result = export_trial(
            folder, args.out, trial=args.trial, dtype=args.dtype, repair_with=args.repair_with, rank=args.rank,
            relocate=dict(args.source), overwrite=args.overwrite, vae=args.vae,
            adjust=args.adjust,
        )
    except user_errors as exc:
        print(f"mergesearch export: {exc}", file=sys.stderr)
        return 2
    from search.review.provenance import describe_scores

    scores = {"search": result.score, "objective": result.objective}
    from merge_core.history import record, written_recipe

    record("export", result.path, recipe=written_recipe(result.path),
           details={"study": result.study_name, "trial": result.trial, "tag_recall": f"{result.score:.4f}",
                    "run": args.run, **({"repaired_with": str(result.repaired_with)} if result.repaired_with else {})})
    print(f"exported trial {result.trial} of {result.study_name} ({result.dtype}, {describe_scores(scores)}) "
          f"to {result.path}")
    if not args.verify:
        return 0
    from search.review.verify import verify_export

    try:
        check = verify_export(folder, result)
    except user_errors as exc:
        print(f"mergesearch export: verify: {exc}", file=sys.stderr)
        return 2
    print(check.describe())
    return 0 if check.ok else 1
