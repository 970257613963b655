"""`mergesearch methods`: every registered merge method, its formula, sources and parameters."""

from __future__ import annotations

import argparse
import math


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "methods",
        help="list the merge methods and calc modes with their formulas and parameters",
        description="Every merge method mergesearch knows (the same registry serves merge, recipes and search).",
    )
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    p.set_defaults(handler=run)
    return p


def _range(p) -> str:
    if math.isinf(p.low) and math.isinf(p.high):
        return f"{p.name}={p.default:g}"
    return f"{p.name}={p.default:g} [{p.low:g}, {p.high:g}]"


def rows() -> list[dict[str, str]]:
    """One row per registered method (registration order)."""
    from merge_core.methods import METHODS

    out = []
    for m in METHODS.values():
        sources = "base + models (one weight each)" if m.model_weights else " ".join(m.roles)
        traits = ["linear" if m.linear else ("elementwise" if m.elementwise else "whole tensor")]
        if m.random:
            traits.append("random (seed)")
        out.append({
            "method": m.name,
            "spellings": ", ".join(m.aliases),
            "sources": sources,
            "parameters": ", ".join(_range(p) for p in m.params) or "-",
            "formula": m.formula,
            "kind": ", ".join(traits),
            "source": m.source,
        })
    return out


def run(args) -> int:
    table = rows()
    if args.markdown:
        cols = ["method", "sources", "parameters", "formula", "kind", "source"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in table:
            # a '|' in a formula (|A|, |B-C|) would end the cell, code span or not: escape it
            cells = [(f"`{r[c]}`" if c in ("method", "formula") else r[c]).replace("|", "\\|") for c in cols]
            print("| " + " | ".join(cells) + " |")
        return 0
    for r in table:
        also = f" (also: {r['spellings']})" if r["spellings"] else ""
        print(f"{r['method']}{also}")
        print(f"    {r['formula']}")
        print(f"    sources: {r['sources']}; parameters: {r['parameters']}; {r['kind']}")
        print(f"    from: {r['source']}")
    return 0
