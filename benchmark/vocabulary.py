"""Tag vocabularies: categories -> tags, loaded from a small YAML file and hashed.

File format::

    name: danbooru-example
    categories:
      hair colour: [blonde hair, black hair, ...]
      background: [white background, ...]

A tag belongs to exactly one category; a prompt takes at most one tag per category.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from benchmark.errors import BenchmarkError
from benchmark.hashing import content_hash

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"


class Vocabulary(BaseModel):
    """Categories -> tags, in file order. Build with `load_vocabulary` or `Vocabulary.build`."""

    model_config = ConfigDict(frozen=True, ignored_types=(cached_property,))

    name: str
    categories: dict[str, tuple[str, ...]]

    @classmethod
    def build(cls, name: str, categories: dict[str, list[str] | tuple[str, ...]], *, source: str = "") -> Vocabulary:
        """Validated constructor: no empty vocabulary or category, no tag twice."""
        where = source or f"vocabulary {name!r}"
        if not categories:
            raise BenchmarkError(f"{where}: the vocabulary has no categories; add `categories: {{name: [tag, ...]}}`")
        seen: dict[str, str] = {}
        clean: dict[str, tuple[str, ...]] = {}
        for category, tags in categories.items():
            if isinstance(tags, str) or not isinstance(tags, list | tuple):
                raise BenchmarkError(f"{where}: category {category!r} must be a list of tags, got {tags!r}")
            if not tags:
                raise BenchmarkError(f"{where}: category {category!r} has no tags; add tags or remove it")
            out = []
            for tag in tags:
                tag = str(tag).strip()
                if not tag:
                    raise BenchmarkError(f"{where}: category {category!r} holds an empty tag; remove it")
                if tag in seen:
                    raise BenchmarkError(
                        f"{where}: tag {tag!r} is listed in category {seen[tag]!r} and again in {category!r}; "
                        "a tag must belong to one category"
                    )
                seen[tag] = str(category)
                out.append(tag)
            clean[str(category)] = tuple(out)
        return cls(name=name, categories=clean)

    @cached_property
    def tags(self) -> tuple[str, ...]:
        """All tags, category by category: the column order of every tag-probability matrix."""
        return tuple(t for tags in self.categories.values() for t in tags)

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tags)}

    @cached_property
    def category_of(self) -> dict[str, str]:
        return {t: c for c, tags in self.categories.items() for t in tags}

    @cached_property
    def category_slices(self) -> dict[str, slice]:
        """Column range of each category in `tags`."""
        out, start = {}, 0
        for c, tags in self.categories.items():
            out[c] = slice(start, start + len(tags))
            start += len(tags)
        return out

    @cached_property
    def hash(self) -> str:
        return content_hash({"name": self.name, "categories": {c: list(t) for c, t in self.categories.items()}})

    def check_tags(self, tags: tuple[str, ...] | list[str], *, where: str = "") -> None:
        """Fail on a tag that is not in this vocabulary."""
        for tag in tags:
            if tag not in self.index:
                raise BenchmarkError(
                    f"{where or 'prompt'}: tag {tag!r} is not in vocabulary {self.name!r} "
                    f"({len(self.tags)} tags); fix the spelling or add it to the vocabulary file"
                )


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists():
        return p
    # A bare name picks a shipped vocabulary: `danbooru` -> benchmark/vocabularies/danbooru.yaml.
    for candidate in (VOCABULARY_DIR / f"{p}.yaml", VOCABULARY_DIR / str(p)):
        if candidate.exists():
            return candidate
    if str(p) == "toyworld":
        return Path(__file__).parent / "toyworld" / "vocab.yaml"
    shipped = sorted(q.stem for q in VOCABULARY_DIR.glob("*.yaml"))
    raise BenchmarkError(f"{p}: no such vocabulary file; give a YAML path or one of {shipped + ['toyworld']}")


def load_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """Read a vocabulary YAML file (or a shipped one by name) with clear errors for bad content."""
    p = _resolve(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BenchmarkError(f"{p}: not valid YAML ({exc}); fix the file") from None
    if not data:
        raise BenchmarkError(f"{p}: the vocabulary file is empty; add `name:` and `categories:`")
    if not isinstance(data, dict) or "categories" not in data:
        raise BenchmarkError(f"{p}: missing key 'categories'; expected `categories: {{name: [tag, ...]}}`")
    cats = data["categories"]
    if cats is not None and not isinstance(cats, dict):
        raise BenchmarkError(f"{p}: key 'categories' must map category names to lists of tags")
    return Vocabulary.build(str(data.get("name") or p.stem), cats or {}, source=str(p))
