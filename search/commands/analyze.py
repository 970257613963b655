"""`mergesearch analyze A B [C ...]`: where checkpoints differ, block by block."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HELP = """\
Compare two or more checkpoints of one family per UNet block, text encoder and VAE:
cosine similarity and relative norm of the difference |A-B|/|A| of every pair, and with --base,
how far each model moved from the base (|M-base|/|base|) and whether two models moved the same
way (cosine of their task vectors M-base). Blocks with attention also get the cosine of the
attention layers' outputs on one fixed seeded input. Blocks that moved most are the ones worth
searching (printed last, usable as `search` block groups).

Writes OUT/analysis.md (table), OUT/analysis.csv (long form) and OUT/analysis.png (heat map).

examples:
  mergesearch analyze toyworld:base toyworld:colorist toyworld:sizer toyworld:backdrop --base base -o docs/analysis
  mergesearch analyze a.safetensors b.safetensors -o runs/ab-analysis
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("analyze", help="compare checkpoints block by block (table + heat map)",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more checkpoints (files, or toyworld:<name> from the toy zoo)")
    p.add_argument("--base", metavar="NAME|PATH",
                   help="the base the others were fine-tuned from (one of MODEL, by name or path)")
    p.add_argument("-o", "--out", type=Path, default=Path("runs/analysis"), help="output folder (default runs/analysis)")
    p.add_argument("--no-attention", action="store_true", help="skip the attention-output similarity")
    p.add_argument("--top", type=int, default=6, help="how many most-changed blocks to name (default 6)")
    p.set_defaults(handler=run)
    return p


def _base_index(base: str | None, models: list[tuple[str, Path]]) -> int | None:
    if base is None:
        return None
    for i, (name, path) in enumerate(models):
        if base in (name, str(path), f"toyworld:{name}") or (Path(base).exists() and Path(base).resolve() == path.resolve()):
            return i
    raise ValueError(f"--base {base!r} is not one of the models ({', '.join(n for n, _ in models)}); "
                     "give one of those names or paths")


def run(args: argparse.Namespace) -> int:
    from benchmark import BenchmarkError
    from merge_core import CheckpointError, layout_for, open_checkpoint
    from merge_core.analysis import analyze
    from search.commands.benchmark import resolve_models
    from search.review.analysis_figure import csv_rows, heat_map, markdown_table

    try:
        models = resolve_models(args.models)
        if len(models) < 2:
            raise ValueError("analyze needs at least two models")
        base = _base_index(args.base, models)
        ckpts = [open_checkpoint(p) for _, p in models]
        families = {c.family for c in ckpts}
        if len(families) > 1:
            raise ValueError("models of several families: " + ", ".join(
                f"{n}={c.family.value}" for (n, _), c in zip(models, ckpts, strict=True)) + "; compare one family")
        layout = layout_for(ckpts[0].family)
        result = analyze(ckpts, layout, names=[n for n, _ in models], base=base, attention=not args.no_attention)
        args.out.mkdir(parents=True, exist_ok=True)
        table = markdown_table(result)
        (args.out / "analysis.md").write_text(table)
        with open(args.out / ".analysis.csv.tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["comparison", "metric", "block", "value"])
            w.writeheader()
            w.writerows(csv_rows(result))
        (args.out / ".analysis.csv.tmp").replace(args.out / "analysis.csv")
        title = "analyze " + " ".join(n for n, _ in models) + (f" (base {result.base})" if result.base else "")
        heat_map(result, args.out / "analysis.png", title=title)
    except (BenchmarkError, CheckpointError, ValueError, OSError) as exc:
        print(f"mergesearch analyze: error: {exc}", file=sys.stderr)
        return 1
    print(table)
    if result.skipped:
        print(f"skipped {len(result.skipped)} key(s) missing or shaped differently in some model, "
              f"e.g. {result.skipped[0]}")
    top = [w for w in result.most_different() if w in layout.blocks][: args.top]
    print(f"blocks that differ most ({'from the base' if result.base else 'between the models'}): {' '.join(top)}")
    print(f"wrote {args.out / 'analysis.md'}, {args.out / 'analysis.csv'}, {args.out / 'analysis.png'}")
    return 0
