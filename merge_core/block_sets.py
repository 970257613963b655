"""Sets of blocks as users write them: ``IN01 OUT03-OUT06``, ``NOT M00 OUT03-OUT06`` (SuperMerger syntax).

Used by Elemental entries, include/exclude and the grid's pinpoint axis. Names are a family's
weight ids (UNet blocks, then TE and VAE); ``BASE`` (SuperMerger's slot for everything outside
the UNet) means TE and VAE together. Ranges follow the layout order. Tokens may be separated by
spaces or commas.
"""

from __future__ import annotations

import difflib
import re

from .layout import BlockLayout


class BlockSetError(ValueError):
    """An unknown block name or a malformed range; the message names the closest valid name."""


def _known(layout: BlockLayout) -> tuple[str, ...]:
    return layout.weight_ids


def check_block_name(name: str, layout: BlockLayout, *, where: str = "") -> str:
    """``name`` upper-cased if it is a weight id of ``layout``; else BlockSetError naming the closest one."""
    up = name.strip().upper()
    if up in _known(layout):
        return up
    m = re.fullmatch(r"(IN|OUT|M|MID|MIDDLE)_?(\d*)", up)
    guess = ("M00" if m.group(1).startswith("M") else f"{m.group(1)}{int(m.group(2) or 0):02d}") if m else up
    close = [guess] if guess in _known(layout) else difflib.get_close_matches(up, (*_known(layout), "BASE"), n=1,
                                                                              cutoff=0.4)
    hint = f"; did you mean {close[0]}?" if close else "."
    fam = layout.family.value.upper()
    ids = _known(layout)
    raise BlockSetError(
        f"{where}unknown block {name!r} for {fam}{hint} Blocks are {ids[0]}..{layout.blocks[-1]}, "
        f"{', '.join(layout.components)} (BASE = {' + '.join(layout.components)})"
    )


def parse_block_set(text: str, layout: BlockLayout, *, where: str = "") -> frozenset[str]:
    """``"IN01 OUT03-OUT06"`` -> {IN01, OUT03, OUT04, OUT05, OUT06}; a leading ``NOT`` takes the complement
    within all weight ids; ``ALL`` (or an empty text) is every weight id.

    Raises BlockSetError (a ValueError) naming the closest valid name for an unknown block, and for a
    range whose ends are in the wrong order.
    """
    tokens = text.replace(",", " ").split()
    negate = bool(tokens) and tokens[0].upper() == "NOT"
    if negate:
        tokens = tokens[1:]
    ids = _known(layout)
    chosen: set[str] = set()
    if not tokens or (len(tokens) == 1 and tokens[0].upper() == "ALL"):
        chosen = set(ids)
        tokens = []
        if negate:
            raise BlockSetError(f"{where}'NOT' needs block names after it, e.g. 'NOT M00 OUT03-OUT06'")
    for tok in tokens:
        if tok.upper() == "BASE":
            chosen.update(layout.components)
            continue
        if "-" in tok:
            lo, _, hi = tok.partition("-")
            a, b = check_block_name(lo, layout, where=where), check_block_name(hi, layout, where=where)
            i, j = ids.index(a), ids.index(b)
            if i > j:
                raise BlockSetError(f"{where}range {tok!r} runs backwards; write {b}-{a}")
            chosen.update(ids[i:j + 1])
        else:
            chosen.add(check_block_name(tok, layout, where=where))
    return frozenset(set(ids) - chosen) if negate else frozenset(chosen)
