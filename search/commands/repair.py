"""`mergesearch repair A B --rank R -o OUT`: contact merge, A plus the rank-R part of B - A."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = """\
Repair a distorted checkpoint A with a low-rank "contact" from B: for every weight,
A + (the rank-R truncation of B - A), conv kernels viewed as out x in*kh*kw, 1-D tensors
(norms, biases) taken from B. Rank 0 gives A; higher ranks move toward B; full rank gives B.
Large matrices use a seeded randomised SVD; the relative residual ||D - D_R|| / ||D|| is
printed and stored in the output's metadata with A, B and R.

example:
  mergesearch repair broken.safetensors base.safetensors --rank 4 -o repaired.safetensors
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "repair",
        help="contact merge: A + low-rank(B - A) to repair a distorted checkpoint",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path, metavar="A", help="the checkpoint to repair")
    p.add_argument("b", type=Path, metavar="B", help="the checkpoint to take the low-rank contact from")
    p.add_argument("-o", "--output", required=True, type=Path, help="the repaired .safetensors to write")
    p.add_argument("--rank", type=int, default=4, help="rank R kept per tensor (default 4)")
    p.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"], default="fp16",
        help="output dtype (default fp16; fp8 for the UNet only, TE/VAE fp16)"
    )
    p.add_argument("--exact", action="store_true", help="exact SVD everywhere (slower; no randomised SVD)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from merge_core import CheckpointError, repair_to_file

    from .merge import unwind_on_sigterm

    t0 = time.perf_counter()
    try:
        with unwind_on_sigterm():
            stats = repair_to_file(
                args.a,
                args.b,
                args.output,
                rank=args.rank,
                dtype=args.dtype,
                exact=True if args.exact else None,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"mergesearch repair: error: {exc}", file=sys.stderr)
        return 1
    from merge_core.history import record

    s = stats.summary()
    record("repair", args.output, sources=[args.a, args.b], details={"rank": s["rank"]})
    print(
        f"wrote {args.output} in {time.perf_counter() - t0:.1f} s: rank {s['rank']} on {s['low_rank_keys']} "
        f"matrices ({s['randomized_keys']} by randomised SVD), relative residual mean {s['residual_mean']:.3f}, "
        f"max {s['residual_max']:.3f}"
    )
    return 0
