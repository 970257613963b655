"""Prompt sets: n prompts of m tags with fixed seeds, disjoint splits, saved as hashed JSON.

A prompt set is generated deterministically from (vocabulary hash, n, m, seed): the same
inputs give the same file on every machine (Python's `random.Random` seeded with a string
is stable across versions). Every trial of a search renders the same prompts with the same
seeds, so score differences come from the weights, not from sampling noise.
"""

from __future__ import annotations

import json
import os
import random
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.errors import BenchmarkError
from benchmark.hashing import content_hash
from benchmark.vocabulary import Vocabulary

SPLITS = ("search", "holdout", "confirm")
Split = Literal["search", "holdout", "confirm"]
_SEED_RANGE = 2**31 - 1


class Prompt(BaseModel):
    """Tags (at most one per category, in vocabulary order) and the seed of its initial noise."""

    model_config = ConfigDict(frozen=True)

    tags: tuple[str, ...]
    seed: int = Field(ge=0)

    def text(self, prefix: str = "") -> str:
        return ", ".join(([prefix] if prefix else []) + list(self.tags))


class VocabularyRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    hash: str


class PromptSet(BaseModel):
    """The benchmark's fixed input. `hash` covers everything but itself."""

    model_config = ConfigDict(frozen=True, ignored_types=(cached_property,))

    vocabulary: VocabularyRef
    tags_per_prompt: int
    seed: int
    prefix: str = ""
    negative: str = ""
    splits: dict[str, tuple[Prompt, ...]]

    @cached_property
    def hash(self) -> str:
        return content_hash(self.model_dump(mode="json"))

    def prompts(self, split: str) -> tuple[Prompt, ...]:
        if split not in self.splits:
            raise BenchmarkError(f"prompt set has no split {split!r}; use one of {sorted(self.splits)}")
        return self.splits[split]

    def texts(self, split: str) -> list[str]:
        return [p.text(self.prefix) for p in self.prompts(split)]

    def check_vocabulary(self, vocabulary: Vocabulary, *, where: str = "prompt set") -> None:
        """Fail when this set was drawn from another vocabulary than the one scoring it."""
        if vocabulary.hash != self.vocabulary.hash:
            raise BenchmarkError(
                f"{where}: made from vocabulary {self.vocabulary.name!r} (hash {self.vocabulary.hash}) "
                f"but scored with {vocabulary.name!r} (hash {vocabulary.hash}); use the same vocabulary "
                "or make a new set with `mergesearch prompts`"
            )
        for split, prompts in self.splits.items():
            for i, p in enumerate(prompts):
                vocabulary.check_tags(p.tags, where=f"{where}, split {split!r}, prompt {i}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON (with the hash) atomically: a temp name in the same folder, then rename."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = {"hash": self.hash, **self.model_dump(mode="json")}
        tmp = p.with_name(f".{p.name}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave a half-written file behind
            raise
        return p


def make_prompt_set(
    vocabulary: Vocabulary,
    n: int,
    tags_per_prompt: int,
    seed: int,
    *,
    holdout: int | None = None,
    confirm: int = 0,
    prefix: str = "",
    negative: str = "",
) -> PromptSet:
    """`n` search prompts, `holdout` (default `n`) held-out prompts and `confirm` prompts that re-score
    a search's leaders, each of `tags_per_prompt` tags.

    Each prompt picks `tags_per_prompt` distinct categories uniformly, then one tag uniformly
    within each. No tag combination (and no seed) appears twice, so the splits are disjoint. The
    confirm prompts are drawn after the others from the same stream, so adding a confirm split
    leaves the search and holdout prompts of a set as they were.
    """
    holdout = n if holdout is None else holdout
    n_cat = len(vocabulary.categories)
    if n < 1 or holdout < 0 or confirm < 0:
        raise BenchmarkError(f"prompt set: need n >= 1, holdout >= 0 and confirm >= 0 "
                             f"(got n={n}, holdout={holdout}, confirm={confirm})")
    if not 1 <= tags_per_prompt <= n_cat:
        raise BenchmarkError(
            f"prompt set: --tags {tags_per_prompt} is impossible with vocabulary {vocabulary.name!r}: "
            f"a prompt takes at most one tag per category and there are {n_cat} categories"
        )
    rng = random.Random(f"mergesearch-prompts:{vocabulary.hash}:{n}:{holdout}:{tags_per_prompt}:{seed}")
    cats = list(vocabulary.categories)
    order = {c: i for i, c in enumerate(cats)}
    seen: set[tuple[str, ...]] = set()
    seeds: set[int] = set()
    prompts: list[Prompt] = []
    total, attempts = n + holdout + confirm, 0
    while len(prompts) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise BenchmarkError(
                f"prompt set: vocabulary {vocabulary.name!r} has too few distinct {tags_per_prompt}-tag "
                f"combinations for {total} prompts; ask for fewer prompts or more tags"
            )
        chosen = sorted(rng.sample(cats, tags_per_prompt), key=order.__getitem__)
        tags = tuple(rng.choice(vocabulary.categories[c]) for c in chosen)
        s = rng.randrange(_SEED_RANGE)
        if tags in seen or s in seeds:
            continue
        seen.add(tags)
        seeds.add(s)
        prompts.append(Prompt(tags=tags, seed=s))
    return PromptSet(
        vocabulary=VocabularyRef(name=vocabulary.name, hash=vocabulary.hash),
        tags_per_prompt=tags_per_prompt,
        seed=seed,
        prefix=prefix,
        negative=negative,
        splits={"search": tuple(prompts[:n]), "holdout": tuple(prompts[n : n + holdout]),
                **({"confirm": tuple(prompts[n + holdout :])} if confirm else {})},
    )


def load_prompt_set(path: str | os.PathLike) -> PromptSet:
    """Read a prompt-set JSON file; a hand-edited file (hash mismatch) is refused."""
    p = Path(path)
    if not p.is_file():
        raise BenchmarkError(f"{p}: no such prompt-set file; make one with `mergesearch prompts VOCAB -o {p}`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"{p}: expected a JSON object written by `mergesearch prompts`")
    stored = data.pop("hash", None)
    try:
        ps = PromptSet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise BenchmarkError(f"{p}: key {key!r}: {err['msg']}; regenerate it with `mergesearch prompts`") from None
    if stored is not None and stored != ps.hash:
        raise BenchmarkError(
            f"{p}: key 'hash' is {stored} but the content hashes to {ps.hash}; the file was edited. "
            "Make a fresh set with `mergesearch prompts` (a changed set must not keep an old hash)"
        )
    seen: dict[tuple[str, ...], str] = {}
    for split, prompts in ps.splits.items():
        for p_ in prompts:
            if p_.tags in seen and seen[p_.tags] != split:
                raise BenchmarkError(f"{p}: prompt {list(p_.tags)} is in both splits {seen[p_.tags]!r} and {split!r}")
            seen[p_.tags] = split
    return ps
