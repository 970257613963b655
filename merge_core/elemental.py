"""Elemental merge and include/exclude: weights per key inside blocks (pure; no I/O).

Elemental (SuperMerger's syntax, behaviour as described in notes/supermerger-spec.md §4):
entries ``BLOCKS:ELEMENTS:RATIO`` separated by commas or newlines.

- BLOCKS: block names separated by spaces, ranges ``IN03-IN06`` in layout order, an optional
  leading ``NOT`` for the complement; empty = every block (see merge_core.block_sets).
- ELEMENTS: substrings of the full single-file key separated by spaces (``attn`` matches attn1 and
  attn2, ``attn2.to_out`` is more specific); an optional leading ``NOT`` = keys containing none of
  them; empty = every key of the chosen blocks.
- RATIO: the value the key gets instead of its block's alpha (the method's first parameter), or
  ``v1/v2/...`` to replace the key's whole parameter vector (e.g. alpha/beta, or one weight per
  model for ``affine``).

For each key every entry is tried in order and **later entries win**.

Include/exclude (:class:`Selection`): a key is *selected* when its block is in ``blocks`` or its
name contains one of ``elements``. With ``mode="exclude"`` selected keys are held from model A
(``sources[0]``, the base for affine); with ``mode="include"`` the unselected ones are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .block_sets import BlockSetError, parse_block_set
from .layout import BlockLayout


class ElementalError(ValueError):
    """A malformed Elemental entry; the message quotes the entry and says how to write it."""


class ElementalEntry(BaseModel):
    """One ``BLOCKS:ELEMENTS:RATIO`` entry with its block set resolved to weight ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    blocks: tuple[str, ...]  # weight ids (NOT and ranges already expanded)
    elements: tuple[str, ...] = ()  # key substrings; () = every key of the blocks
    not_elements: bool = False  # True: keys containing none of `elements`
    ratio: tuple[float, ...]  # (alpha,) or the whole parameter vector
    text: str = ""  # as the user wrote it (for messages and history)

    def matches(self, key: str, block: str) -> bool:
        if block not in self.blocks:
            return False
        if not self.elements:
            return True
        hit = any(e in key for e in self.elements)
        return hit != self.not_elements


def parse_elemental(text: str | Sequence[str], layout: BlockLayout) -> tuple[ElementalEntry, ...]:
    """Entries from ``"IN04 IN05:attn2:0.2, NOT M00::0.8"`` (or a list of entry strings).

    Raises ElementalError (a ValueError) for an entry without exactly two ``:``, a ratio that is
    not a number, or an unknown block name (the closest valid name is given).
    """
    parts = [text] if isinstance(text, str) else list(text)
    raw = [e.strip() for p in parts for line in p.splitlines() for e in line.split(",")]
    entries = []
    for e in raw:
        if not e:
            continue
        if e.count(":") != 2:
            raise ElementalError(
                f"elemental entry {e!r}: write BLOCKS:ELEMENTS:RATIO with exactly two ':' "
                "(e.g. 'IN04 OUT05:attn2:0.3'; empty BLOCKS or ELEMENTS mean all)"
            )
        btext, etext, rtext = (s.strip() for s in e.split(":"))
        try:
            blocks = parse_block_set(btext, layout, where=f"elemental entry {e!r}: ")
        except BlockSetError as exc:
            raise ElementalError(str(exc)) from None
        words = etext.split()
        not_el = bool(words) and words[0] == "NOT"
        if not_el:
            words = words[1:]
            if not words:
                raise ElementalError(f"elemental entry {e!r}: 'NOT' needs element names after it, e.g. 'NOT attn2'")
        try:
            ratio = tuple(float(v) for v in rtext.split("/"))
        except ValueError:
            raise ElementalError(
                f"elemental entry {e!r}: ratio {rtext!r} is not a number (or v1/v2/... for a whole vector)"
            ) from None
        entries.append(ElementalEntry(
            blocks=tuple(w for w in layout.weight_ids if w in blocks), elements=tuple(words),
            not_elements=not_el, ratio=ratio, text=e,
        ))
    return tuple(entries)


def check_ratios(entries: Sequence[ElementalEntry], n_params: int, method: str) -> None:
    """Every ratio is one value (alpha) or a whole vector of ``n_params``; ValueError otherwise."""
    for e in entries:
        if len(e.ratio) not in (1, n_params):
            raise ElementalError(
                f"elemental entry {e.text!r}: {method} takes {n_params} value(s) per block; give one "
                f"(replaces alpha) or {n_params} separated by '/', not {len(e.ratio)}"
            )


def elemental_params(entries: Sequence[ElementalEntry], key: str, block: str,
                     params: tuple[float, ...]) -> tuple[float, ...]:
    """``params`` of ``block`` as overridden for ``key`` by the last matching entry (later entries win)."""
    out = params
    for e in entries:
        if e.matches(key, block):
            out = e.ratio + params[1:] if len(e.ratio) == 1 else e.ratio
    return out


class Selection(BaseModel):
    """Include/exclude: which keys are merged and which are held from model A."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["include", "exclude"]
    blocks: tuple[str, ...] = ()  # weight ids
    elements: tuple[str, ...] = ()  # key substrings

    def held(self, key: str, block: str) -> bool:
        """True when ``key`` is not merged (kept as model A has it)."""
        selected = block in self.blocks or any(e in key for e in self.elements)
        return selected if self.mode == "exclude" else not selected


def parse_selection(mode: Literal["include", "exclude"], text: str, layout: BlockLayout) -> Selection:
    """``"IN00 OUT11 VAE"`` (block names, ranges, NOT) plus key substrings after ``:``, e.g.
    ``"VAE OUT11 : attn2 norm"``. Unknown block names fail with the closest match."""
    btext, _, etext = text.partition(":")
    blocks = parse_block_set(btext, layout, where=f"--{mode} {text!r}: ") if btext.strip() else frozenset()
    return Selection(mode=mode, blocks=tuple(w for w in layout.weight_ids if w in blocks),
                     elements=tuple(etext.split()))


def key_params(key: str, block: str, params: tuple[float, ...], *,
               elemental: Sequence[ElementalEntry] = (), selection: Selection | None = None) -> tuple[float, ...] | None:
    """The parameter vector ``key`` is merged with, or None when it is held from model A."""
    if selection is not None and selection.held(key, block):
        return None
    return elemental_params(elemental, key, block, params) if elemental else params
