"""`mergesearch inspect FILE`: what a checkpoint is, block by block."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HELP = """\
Print a checkpoint's family and variant (standard, inpainting, instruct-pix2pix; the SDXL refiner
is its own family), its prediction type (from its keys or metadata), the keys no block or component
holds, dtypes, size, parameter count per UNet block and component,
sha256 and A1111 short hash, and its metadata (merge recipes included).

examples:
  mergesearch inspect model.safetensors
  mergesearch inspect model.ckpt --json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect",
        help="show a checkpoint's family, blocks, hash and metadata",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help=".safetensors, .ckpt or .pt checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-hash", action="store_true", help="skip the sha256 (it reads the whole file)")
    p.set_defaults(handler=run)
    return p


def describe(path: Path, *, hash: bool = True) -> dict:
    """Everything `inspect` shows, as plain data."""
    from merge_core import layout_for, open_checkpoint

    ckpt = open_checkpoint(path)
    layout = layout_for(ckpt.family)
    params = dict.fromkeys(layout.weight_ids, 0)
    copied, unknown, dtypes = 0, [], Counter()
    for key in ckpt.keys():
        n = ckpt.numel(key)
        dtypes[str(ckpt.dtype(key)).removeprefix("torch.")] += n
        block = layout.block_of(key)
        if block is not None:
            params[block] += n
        elif layout.is_non_mergeable(key):
            copied += 1
        else:
            unknown.append(key)
    info = {
        "file": str(path),
        "format": ckpt.format,
        "family": ckpt.family.value,
        "variant": ckpt.variant,
        "prediction": ckpt.prediction,
        "prediction_source": ckpt.prediction_source,
        "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir()
        else path.stat().st_size,
        "tensors": len(ckpt.keys()),
        "parameters": sum(params.values()),
        "dtypes": dict(dtypes.most_common()),
        "params_per_block": params,
        # which parts the file holds: merges refuse a part a weighted source lacks, so a partial file shows here
        "parts": [p for p, ids in (("UNet", layout.blocks), *((c, (c,)) for c in layout.components))
                  if any(params[i] for i in ids)],
        "non_mergeable_keys": copied,
        "unknown_keys": unknown,
        "ema_keys": len(ckpt.ema_keys()),
        "metadata": ckpt.metadata,
    }
    if hash:
        info["sha256"] = ckpt.sha256
        info["short_hash"] = ckpt.short_hash
    return info


def _fmt(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e5 else f"{n:,}"


def render(info: dict) -> str:
    lines = [
        f"file        {info['file']}",
        f"family      {info['family']}, {info['variant']}",
        "prediction  "
        + (
            f"{info['prediction']} (from the file's {info['prediction_source']})"
            if info["prediction"]
            else "not stated in the file (loaders assume epsilon unless told)"
        ),
        f"format      {info['format']}, {info['size_bytes'] / 1e9:.2f} GB, {info['tensors']} tensors",
        "dtype       " + ", ".join(f"{k} {_fmt(v)}" for k, v in info["dtypes"].items()),
        f"parameters  {_fmt(info['parameters'])}",
        "parts       " + (", ".join(info["parts"]) or "none")
        + (f" (no {', '.join(m for m in ('UNet', 'TE', 'VAE') if m not in info['parts'])})"
           if len(info["parts"]) < 3 else ""),
    ]
    if "sha256" in info:
        lines.append(f"sha256      {info['sha256']}  [{info['short_hash']}]")
    extra = f"{info['non_mergeable_keys']} non-weight keys copied as they are"
    if info["ema_keys"]:
        extra += f", {info['ema_keys']} EMA keys"
    lines.append(f"other       {extra}")
    if info["unknown_keys"]:
        n = len(info["unknown_keys"])
        lines.append(f"unplaced    {n} key(s) in no block or component (copied by merges; a UNet one is refused):")
        lines += [f"  {k}" for k in info["unknown_keys"][:20]] + ([f"  ... {n - 20} more"] if n > 20 else [])
    lines += ["", "block     params"]
    total = max(info["parameters"], 1)
    for block, n in info["params_per_block"].items():
        lines.append(f"{block:8s} {_fmt(n):>8s}  {'#' * round(40 * n / total)}")
    meta = info["metadata"]
    if meta:
        lines += ["", "metadata"]
        for k, v in meta.items():
            try:
                v = json.dumps(json.loads(v), indent=2) if v[:1] in "{[" else v
            except ValueError:
                pass
            v = v if len(v) < 2000 else v[:2000] + f"... ({len(v)} characters)"
            lines.append(f"  {k}: " + v.replace("\n", "\n    "))
    return "\n".join(lines)


def run(args) -> int:
    from merge_core import CheckpointError

    try:
        info = describe(args.file, hash=not args.no_hash)
    except (CheckpointError, OSError) as exc:
        print(f"mergesearch inspect: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
