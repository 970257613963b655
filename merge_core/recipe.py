"""The recipe: everything needed to rebuild a merge, as a frozen, JSON-serialisable model."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .adjust import Adjust
from .elemental import ElementalEntry, Selection, check_ratios, key_params
from .family import Family
from .hashing import file_sha256
from .layout import layout_for
from .methods import canonical_name, get_method

# fp8 outputs hold the UNet in float8 and the text encoders and VAE in fp16 (merge.output_dtype).
Dtype = Literal["fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2"]


class Source(BaseModel):
    """One input checkpoint: where it is, what it hashes to, and a display name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str | None = None
    name: str = ""

    @model_validator(mode="after")
    def _default_name(self) -> Source:
        if not self.name:
            object.__setattr__(self, "name", Path(self.path).stem)
        return self

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, name: str = "", hash: bool = True) -> Source:
        return cls(path=str(path), sha256=file_sha256(path) if hash else None, name=name)


class LoraUse(BaseModel):
    """A kohya LoRA baked into a merge: its file, sha256, and a strength per weight id.

    ``strengths`` maps UNet blocks and ``"TE"`` to the ratio the LoRA is added with there
    (W += strength * alpha/r * up @ down); weight ids not named get 0. Applied after the merge
    (and its Adjust), by the streaming merger and the search's Mixer alike.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str | None = None
    name: str = ""
    strengths: dict[str, float]

    @model_validator(mode="after")
    def _default_name(self) -> LoraUse:
        if not self.name:
            object.__setattr__(self, "name", Path(self.path).stem)
        if not all(math.isfinite(v) for v in self.strengths.values()):
            raise ValueError(f"LoRA {self.name}: strengths must be finite numbers, got {self.strengths}")
        return self


class Recipe(BaseModel):
    """A merge of ``sources`` by ``method`` with per-block ``weights``.

    ``weights`` has one entry per weight id of the family's layout (UNet blocks, then TE
    and VAE) holding that method's vector for the block (see merge_core.methods): one weight
    per non-base source for ``affine`` and the task-vector methods (``sources[0]`` is the
    base), then the method's named parameters, e.g. ``(alpha,)``, ``(alpha, beta)``,
    ``(w1, w2, w3, density, lambda)`` for ``ties``. Random methods need ``seed``.
    Raises pydantic.ValidationError for an unknown method, the wrong number of sources, a
    vector of the wrong length, a parameter outside its range, or a random method without a seed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family
    method: str
    sources: tuple[Source, ...]
    weights: dict[str, tuple[float, ...]]
    dtype: Dtype = "fp16"
    keep_ema: bool = False
    seed: int | None = None  # random methods (DARE): the drop masks are a function of (seed, key, source)
    # per-key rules (merge_core.elemental, merge_core.adjust): empty/None = plain per-block merge
    elemental: tuple[ElementalEntry, ...] = ()
    selection: Selection | None = None
    adjust: Adjust | None = None
    loras: tuple[LoraUse, ...] = ()  # LoRAs added after the merge (merge_core.lora)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return get_method(v).name

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        method = get_method(self.method)
        method.check_sources(len(self.sources))
        ids = layout_for(self.family).weight_ids
        missing = [w for w in ids if w not in self.weights]
        unknown = [w for w in self.weights if w not in ids]
        if missing or unknown:
            raise ValueError(
                f"recipe weights for {self.family.value} must cover exactly {', '.join(ids)}; "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown {', '.join(unknown)}" if unknown else "")
            )
        for wid, params in self.weights.items():
            if not all(math.isfinite(p) for p in params):
                raise ValueError(f"weight of {wid} is not a finite number: {params}")
            method.split(params, len(self.sources), where=wid)  # length and ranges
        if method.random and self.seed is None:
            raise ValueError(
                f"{method.name} is random: the recipe needs a seed (e.g. \"seed\": 0) so the merge can be rebuilt "
                "bit for bit; a recipe without one cannot be replayed"
            )
        self._check_key_rules(ids)
        allowed = set(layout_for(self.family).blocks) | {"TE"}
        for lora in self.loras:
            wrong = sorted(set(lora.strengths) - allowed)
            if wrong:
                raise ValueError(f"LoRA {lora.name}: strengths for {', '.join(wrong)}; a LoRA has strengths for "
                                 f"the UNet blocks and TE only")
        # Keep weights in layout order so JSON and metadata read in block order.
        object.__setattr__(self, "weights", {w: tuple(float(p) for p in self.weights[w]) for w in ids})
        return self

    @property
    def linear(self) -> bool:
        """True when the method is linear in the sources (then :meth:`coefficients` applies)."""
        return get_method(self.method).linear

    def _check_key_rules(self, ids: tuple[str, ...]) -> None:
        named = [b for e in self.elemental for b in e.blocks] + list(self.selection.blocks if self.selection else ())
        unknown = sorted(set(named) - set(ids))
        if unknown:
            raise ValueError(f"elemental/include/exclude name blocks {', '.join(unknown)} that "
                             f"{self.family.value} does not have; blocks are {', '.join(ids)}")
        if self.elemental:
            check_ratios(self.elemental, len(next(iter(self.weights.values()))), self.method)
            method = get_method(self.method)
            for e in self.elemental:  # each override must be a valid vector for the method (lengths, ranges)
                for b in e.blocks:
                    vec = e.ratio + self.weights[b][1:] if len(e.ratio) == 1 else e.ratio
                    method.split(vec, len(self.sources), where=f"elemental entry {e.text!r} in {b}")

    @property
    def per_key(self) -> bool:
        """True when some key may be merged with other parameters than its block's (elemental, include/exclude)."""
        return bool(self.elemental) or self.selection is not None

    def key_params(self, key: str, block: str) -> tuple[float, ...] | None:
        """The parameter vector ``key`` (of ``block``) is merged with; None = held from model A (sources[0])."""
        return key_params(key, block, self.weights[block], elemental=self.elemental, selection=self.selection)

    def coefficients(self) -> dict[str, tuple[float, ...]]:
        """One linear coefficient per source for every weight id (linear methods only; ValueError otherwise)."""
        method = get_method(self.method)
        n = len(self.sources)
        return {wid: method.coefficients(params, n) for wid, params in self.weights.items()}

    @classmethod
    def uniform(
        cls,
        family: Family | str,
        method: str,
        sources: tuple[Source, ...] | list[Source],
        params: tuple[float, ...],
        *,
        te: tuple[float, ...] | None = None,
        vae: tuple[float, ...] | None = None,
        blocks: dict[str, tuple[float, ...]] | None = None,
        dtype: Dtype = "fp16",
        keep_ema: bool = False,
        seed: int | None = None,
    ) -> Recipe:
        """A recipe with ``params`` everywhere, overridden per block by ``blocks`` and for TE/VAE by ``te``/``vae``."""
        layout = layout_for(family)
        weights = {w: tuple(params) for w in layout.weight_ids}
        weights.update(blocks or {})
        if te is not None:
            weights["TE"] = tuple(te)
        if vae is not None:
            weights["VAE"] = tuple(vae)
        return cls(
            family=Family(family),
            method=canonical_name(method),
            sources=tuple(sources),
            weights=weights,
            dtype=dtype,
            keep_ema=keep_ema,
            seed=seed,
        )

    def to_json(self, **kwargs) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        return cls.model_validate_json(text)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        return cls.from_json(Path(path).read_text())
