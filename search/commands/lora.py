"""`mergesearch lora apply|merge|extract`: kohya LoRAs (LoRA and LoCon) into checkpoints, merged, extracted."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = """\
kohya-format LoRA and LoCon for SD1, SD2 and SDXL (text encoder and UNet).

  apply MODEL LORA[:RATIO[:BLOCKS]] ... -o OUT
      bake LoRAs into a checkpoint: W + ratio * block_ratio * (alpha/rank) * up @ down,
      streamed key by key. RATIO may be negative. BLOCKS are per-block ratios in the
      LoRA-block-weight layout, BASE (text encoder) first: 17 or 26 values for SD1/SD2,
      12 or 20 for SDXL, or a preset (NONE ALL INS IND INALL MIDD OUTD OUTS OUTALL ALL0.5);
      blocks a short list leaves out get 0; RATIO multiplies every entry.
  merge L1:R1 L2:R2 ... -o OUT [--rank R]
      one LoRA from several: same rank -> concatenated (exact); different ranks or --rank ->
      the summed delta re-factorised by truncated SVD.
  extract A B --rank R [--alpha a --beta b] -o OUT
      the LoRA of a*B - b*A (defaults 1, 1: applying it to A at ratio 1 moves A to B, up to
      the rank-R truncation). Same truncated SVD as `repair`. --conv-rank sets the rank of
      3x3 convs (LoCon; default R, 0 = attention/MLP only as kohya trains by default).

examples:
  mergesearch lora extract base.safetensors tuned.safetensors --rank 32 -o tuned-r32.safetensors
  mergesearch lora apply base.safetensors tuned-r32.safetensors:0.8:MIDD style.safetensors:-0.3 -o out.safetensors
  mergesearch lora merge a.safetensors:0.7 b.safetensors:0.3 -o ab.safetensors
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lora",
        help="LoRA: bake into a checkpoint, merge several, extract from two checkpoints",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION")
    a = sub.add_parser("apply", help="bake LoRAs into a checkpoint")
    a.add_argument("model", type=Path, metavar="MODEL")
    a.add_argument("loras", nargs="+", metavar="LORA[:RATIO[:BLOCKS]]")
    m = sub.add_parser("merge", help="merge LoRAs into one")
    m.add_argument("loras", nargs="+", metavar="LORA:RATIO")
    m.add_argument("--rank", type=int, help="re-factorise to this rank (default: concatenate when ranks agree)")
    e = sub.add_parser("extract", help="extract a LoRA of B - A from two checkpoints")
    e.add_argument("a", type=Path, metavar="A")
    e.add_argument("b", type=Path, metavar="B")
    e.add_argument("--rank", type=int, required=True, help="rank of linear and 1x1 layers")
    e.add_argument("--conv-rank", type=int, help="rank of 3x3 convs (default: --rank; 0 = none)")
    e.add_argument("--alpha", type=float, default=1.0, help="weight of B (default 1)")
    e.add_argument("--beta", type=float, default=1.0, help="weight of A (default 1)")
    for q in (a, m, e):
        q.add_argument("-o", "--output", required=True, type=Path, help="the .safetensors to write")
        q.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="output dtype (default fp16)")
        q.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def _merge_specs(texts: list[str]) -> list[tuple[str, float]]:
    from merge_core.lora import LoraSpec

    specs = [LoraSpec.parse(t) for t in texts]
    if any(s.blocks for s in specs):
        raise ValueError("lora merge takes LORA:RATIO; per-block ratios belong to `lora apply`")
    return [(s.path, s.ratio) for s in specs]


def run(args) -> int:
    from merge_core import CheckpointError
    from merge_core.lora import LoraSpec, apply_loras_to_file, extract_lora, merge_loras

    from .merge import unwind_on_sigterm

    if not args.lora_command:
        print("mergesearch lora: give an action: apply, merge or extract", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with unwind_on_sigterm():
            if args.lora_command == "apply":
                specs = [LoraSpec.parse(t) for t in args.loras]
                plan = apply_loras_to_file(args.model, specs, args.output, dtype=args.dtype,
                                           overwrite=args.overwrite, progress=not args.quiet)
                what = f"{len(plan.deltas)} weights changed by {len(specs)} LoRA(s)"
            elif args.lora_command == "merge":
                s = merge_loras(_merge_specs(args.loras), args.output, rank=args.rank, dtype=args.dtype,
                                overwrite=args.overwrite)
                what = f"{s['modules']} modules, {s['mode']}" + (
                    f" to rank {s['rank']}, relative residual max {s['residual_max']:.3g}" if s["rank"] else "")
            else:
                st = extract_lora(args.a, args.b, args.output, rank=args.rank, conv_rank=args.conv_rank,
                                  alpha=args.alpha, beta=args.beta, dtype=args.dtype, overwrite=args.overwrite,
                                  progress=not args.quiet).summary()
                what = (f"{st['modules']} modules at rank {st['rank']} (3x3 convs {st['conv_rank']}), relative "
                        f"residual mean {st['residual_mean']:.3g}, max {st['residual_max']:.3g}")
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"mergesearch lora {args.lora_command}: error: {exc}", file=sys.stderr)
        return 1
    from merge_core.history import record

    if args.lora_command == "apply":
        sources = [args.model, *(LoraSpec.parse(t).path for t in args.loras)]
    elif args.lora_command == "merge":
        sources = [path for path, _ in _merge_specs(args.loras)]
    else:
        sources = [args.a, args.b]
    record(f"lora {args.lora_command}", args.output, sources=sources,
           details={"loras": " ".join(getattr(args, "loras", None) or []), "rank": getattr(args, "rank", "")})
    if not getattr(args, "quiet", False):
        print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s: {what}")
    return 0
