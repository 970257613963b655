"""XYZ-plot axes and the cells they span (pure: text in, validated cell recipes out; nothing renders here).

An axis is ``KIND=VALUES``. Scalar kinds take comma-separated values (or ``LO..HIxN``, N evenly
spaced values); kinds whose values contain commas or spaces take ``|``-separated values.

========================  ====================================================================
kind                      values
========================  ====================================================================
alpha, beta               numbers: ``0,0.25,0.5`` or ``0..1x5``
alpha-beta                pairs ``0.2 0.3`` (one number sets both), comma-separated
mbw                       ``|``-separated rows of per-block alphas: 25/26 numbers (19/20 SDXL,
                          BASE first optional), or a block set (``IN00-IN11``) = 1 there, 0 elsewhere
pinpoint                  ``|``-separated block sets (``IN01|OUT03-OUT06|NOT M00 OUT03-OUT06``):
                          the alpha axis's value goes into those blocks, the rest keep ``--alpha``
method                    registry names or A1111/SuperMerger spellings (calc modes too), comma-separated
seed                      integers
model-a, model-b, model-c files or ``toyworld:NAME``, comma-separated
prompt                    ``|``-separated prompts
elemental                 ``|``-separated Elemental texts (``OUT03-OUT06:attn2:0.9, M00::0``)
adjust                    ``|``-separated eight-value Adjust strings
random                    a count N: N cells of seeded random block weights ("let the dice roll")
========================  ====================================================================

Everything is checked here, before a model is loaded: unknown kinds and block names (closest match
named), empty axes, wrong Adjust counts, methods that need a model C that is not given.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

KINDS = ("alpha", "beta", "alpha-beta", "mbw", "pinpoint", "method", "seed", "model-a", "model-b", "model-c",
         "prompt", "elemental", "adjust", "random")
_BAR_KINDS = ("mbw", "pinpoint", "prompt", "elemental", "adjust")


class GridError(ValueError):
    """A grid specification that cannot be rendered; raised before any model is loaded."""


@dataclass(frozen=True)
class Axis:
    kind: str
    values: tuple  # parsed values, one per position
    labels: tuple[str, ...]


@dataclass(frozen=True)
class GridBase:
    """What every cell starts from (the command's options)."""

    models: tuple[str, ...]  # A, B[, C] as given (paths or toyworld:NAME)
    method: str = "weighted-sum"
    alpha: float = 0.5
    beta: float = 0.25
    prompt: str = ""
    seed: int = 0
    elemental: str = ""
    adjust: str = ""
    dice_seed: int = 0


class Cell(BaseModel):
    """One image of the grid: where it sits, what it shows, and the recipe that made it."""

    model_config = ConfigDict(frozen=True)

    x: int
    y: int
    z: int
    labels: tuple[str, str, str]
    prompt: str
    seed: int
    recipe: dict  # Recipe JSON (fp32, sources with path and name)

    def cache_key(self, settings: dict, config: str, hashes: dict[str, str]) -> str:
        """What the image depends on: recipe (sources by content hash), prompt, seed, render settings."""
        recipe = dict(self.recipe)
        recipe["sources"] = [hashes.get(s["path"], s["path"]) for s in recipe["sources"]]
        blob = json.dumps([recipe, self.prompt, self.seed, settings, config], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _numbers(kind: str, text: str) -> tuple[float, ...]:
    text = text.strip()
    if ".." in text:
        lo, _, rest = text.partition("..")
        hi, _, n = rest.partition("x")
        try:
            lo_f, hi_f, count = float(lo), float(hi), int(n or 5)
        except ValueError:
            raise GridError(f"{kind}={text}: write LO..HIxN, e.g. 0..1x5") from None
        if count < 1:
            raise GridError(f"{kind}={text}: N must be at least 1")
        return tuple(lo_f + (hi_f - lo_f) * i / max(count - 1, 1) for i in range(count))
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise GridError(f"{kind}={text}: values must be numbers separated by commas (or LO..HIxN)") from None


def _fmt(v: float) -> str:
    return f"{v:g}"


def parse_axis(spec: str, layout) -> Axis:
    """``"alpha=0..1x5"`` -> Axis. Raises GridError with the fix for anything malformed."""
    from merge_core import get_method
    from merge_core.adjust import parse_adjust
    from merge_core.block_sets import parse_block_set
    from merge_core.elemental import parse_elemental
    from merge_core.weights import parse_block_list

    kind, sep, text = spec.partition("=")
    kind = kind.strip().lower().replace("_", "-")
    if not sep:
        raise GridError(f"axis {spec!r}: write KIND=VALUES, e.g. alpha=0,0.5,1 (kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        raise GridError(f"axis {spec!r}: unknown kind {kind!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" Kinds: {', '.join(KINDS)}")
    raw = [v.strip() for v in (text.split("|") if kind in _BAR_KINDS else [text])]
    raw = [v for v in raw if v]
    if not raw:
        raise GridError(f"axis {kind} has no values; give at least one, e.g. {kind}={_example(kind)}")
    try:
        if kind in ("alpha", "beta"):
            values = _numbers(kind, raw[0])
            labels = tuple(f"{kind} {_fmt(v)}" for v in values)
        elif kind == "alpha-beta":
            pairs = []
            for item in raw[0].split(","):
                nums = _numbers(kind, item.replace(" ", ",")) if item.strip() else ()
                if len(nums) not in (1, 2):
                    raise GridError(f"alpha-beta value {item!r}: write 'ALPHA BETA' or one number for both")
                pairs.append((nums[0], nums[-1]))
            values = tuple(pairs)
            labels = tuple(f"a {_fmt(a)} b {_fmt(b)}" for a, b in values)
        elif kind == "mbw":
            rows = []
            for v in raw:
                if any(c.isalpha() for c in v):
                    chosen = parse_block_set(v, layout, where=f"mbw row {v!r}: ")
                    rows.append({b: 1.0 if b in chosen else 0.0 for b in layout.blocks})
                else:
                    per_block, base_alpha = parse_block_list(v, layout)
                    if base_alpha is not None:  # SuperMerger's BASE slot: the text encoder(s) and the VAE
                        per_block.update({c: base_alpha for c in layout.components})
                    rows.append(per_block)
            values = tuple(rows)
            labels = tuple(v if len(v) <= 24 else v[:21] + "..." for v in raw)
        elif kind == "pinpoint":
            values = tuple(parse_block_set(v, layout, where=f"pinpoint {v!r}: ") for v in raw)
            labels = tuple(raw)
        elif kind == "method":
            values = tuple(get_method(v.strip()).name for v in raw[0].split(",") if v.strip())
            labels = values
        elif kind == "seed":
            try:
                values = tuple(int(v) for v in raw[0].split(",") if v.strip())
            except ValueError:
                raise GridError(f"seed={raw[0]}: seeds are integers separated by commas") from None
            labels = tuple(f"seed {v}" for v in values)
        elif kind in ("model-a", "model-b", "model-c"):
            values = tuple(v.strip() for v in raw[0].split(",") if v.strip())
            labels = tuple(Path(v.split(":", 1)[1] if v.startswith("toyworld:") else v).stem for v in values)
        elif kind == "prompt":
            values = tuple(raw)
            labels = tuple(raw)
        elif kind == "elemental":
            for v in raw:
                parse_elemental(v, layout)
            values = tuple(raw)
            labels = tuple(raw)
        elif kind == "adjust":
            for v in raw:
                parse_adjust(v)
            values = tuple(raw)
            labels = tuple(f"adjust {v}" for v in raw)
        else:  # random
            try:
                n = int(raw[0])
            except ValueError:
                raise GridError(f"random={raw[0]}: give a count of dice rolls, e.g. random=5") from None
            if n < 1:
                raise GridError("random: the count must be at least 1")
            values = tuple(range(n))
            labels = tuple(f"dice {i}" for i in values)
    except GridError:
        raise
    except ValueError as exc:  # block names, Adjust counts, methods: their own clear messages
        raise GridError(f"axis {kind}: {exc}") from None
    if not values:
        raise GridError(f"axis {kind} has no values; give at least one, e.g. {kind}={_example(kind)}")
    return Axis(kind, tuple(values), tuple(labels))


def _example(kind: str) -> str:
    return {"alpha": "0,0.5,1", "beta": "0,0.5", "alpha-beta": "0.2 0.3,0.5 0.5", "mbw": "IN00-IN11|OUT00-OUT11",
            "pinpoint": "IN01|OUT03-OUT06", "method": "weighted-sum,slerp", "seed": "1,2,3",
            "prompt": "red circle|blue square", "elemental": "OUT03-OUT06:attn2:0.9", "adjust": "0,0,0,0,3,0,0,0",
            "random": "5"}.get(kind, "A.safetensors,B.safetensors")


@dataclass
class _State:
    models: list[str]
    method: str
    alpha: float
    beta: float
    prompt: str
    seed: int
    elemental: str
    adjust: str
    mbw: dict[str, float] | None = None
    pinpoint: frozenset[str] | None = None
    dice: int | None = None
    extra: dict = field(default_factory=dict)


def _vector(method, n_sources: int, alpha: float, beta: float) -> tuple[float, ...]:
    """A method's per-block vector from alpha/beta: model weights = alpha, named params alpha/beta, else defaults."""
    out = []
    for name in method.param_names(n_sources):
        if name.startswith("w") and name[1:].isdigit():
            out.append(alpha)
        elif name == "alpha":
            out.append(alpha)
        elif name == "beta":
            out.append(beta)
        else:
            out.append(method.defaults()[name])
    return tuple(out)


def build_cells(base: GridBase, axes: list[Axis], layout, family, resolve) -> list[Cell]:
    """Every cell's recipe, validated. ``resolve(spec) -> Path`` turns a model spec into a file.

    Raises GridError for a pinpoint axis without an alpha axis, a method that needs more models than
    given, more than three axes, or a recipe the method refuses.
    """
    from pydantic import ValidationError

    from merge_core import Recipe, Source, get_method
    from merge_core.adjust import parse_adjust
    from merge_core.elemental import parse_elemental

    if len(axes) > 3:
        raise GridError("a grid has at most three axes (x, y, z)")
    kinds = [a.kind for a in axes]
    dupes = {k for k in kinds if kinds.count(k) > 1}
    if dupes:
        raise GridError(f"axis {sorted(dupes)[0]} is given twice; one axis per kind")
    if "pinpoint" in kinds and not {"alpha", "alpha-beta"} & set(kinds):
        raise GridError("a pinpoint axis writes the alpha axis's value into its blocks: add an alpha axis, "
                        "e.g. --y alpha=0,0.5,1")
    padded = list(axes) + [Axis("none", (None,), ("",))] * (3 - len(axes))
    sources_cache: dict[str, Source] = {}

    def source(spec: str, role: str) -> Source:
        if spec not in sources_cache:
            path = resolve(spec)
            sources_cache[spec] = Source(path=str(path), name=Path(path).stem)
        return sources_cache[spec]

    cells: list[Cell] = []
    for (ix, vx), (iy, vy), (iz, vz) in itertools.product(*(list(enumerate(a.values)) for a in padded)):
        st = _State(models=list(base.models), method=base.method, alpha=base.alpha, beta=base.beta,
                    prompt=base.prompt, seed=base.seed, elemental=base.elemental, adjust=base.adjust)
        for axis, v in zip(padded, (vx, vy, vz), strict=True):
            _set(st, axis.kind, v)
        method = get_method(st.method)
        n = method.n_sources or len([m for m in st.models if m])
        models = [m for m in st.models[:n] if m]
        if len(models) < n:
            raise GridError(f"method {method.name} merges {n} models ({' '.join(method.roles)}); give model "
                            f"{'ABC'[len(models)]} (a third MODEL argument or a model-{'abc'[len(models)]} axis)")
        srcs = tuple(source(m, "ABC"[i]) for i, m in enumerate(models))
        weights = {}
        rng = random.Random(base.dice_seed * 1_000_003 + st.dice) if st.dice is not None else None
        for wid in layout.weight_ids:
            a = st.alpha
            if wid in layout.blocks:
                if st.pinpoint is not None:
                    a = st.alpha if wid in st.pinpoint else base.alpha
                elif st.mbw is not None:
                    a = st.mbw.get(wid, st.alpha)
                if rng is not None:
                    a = round(rng.random(), 3)  # SuperMerger's "R": uniform [0, 1), 3 decimals
            elif st.pinpoint is not None and wid not in st.pinpoint:
                a = base.alpha
            elif st.mbw is not None and wid in st.mbw:
                a = st.mbw[wid]
            weights[wid] = _vector(method, len(srcs), a, st.beta)
        update = {}
        if st.elemental:
            update["elemental"] = tuple(e.model_dump() for e in parse_elemental(st.elemental, layout))
        if st.adjust:
            update["adjust"] = parse_adjust(st.adjust).model_dump()
        try:
            recipe = Recipe.model_validate({
                "family": family, "method": method.name, "sources": [s.model_dump() for s in srcs],
                "weights": weights, "dtype": "fp32", **({"seed": st.seed} if method.random else {}), **update})
        except (ValidationError, ValueError) as exc:
            from search.commands.merge import error_text

            raise GridError(f"cell ({', '.join(a.labels[i] for a, i in zip(padded, (ix, iy, iz), strict=True) if a.labels[i])}): "
                            f"{error_text(exc)}") from None
        labels = tuple(a.labels[i] for a, i in zip(padded, (ix, iy, iz), strict=True))
        cells.append(Cell(x=ix, y=iy, z=iz, labels=labels, prompt=st.prompt, seed=st.seed,
                          recipe=json.loads(recipe.to_json())))
    if any(not c.prompt for c in cells):
        raise GridError("no prompt: give --prompt TEXT or a prompt axis")
    return cells


def _set(st: _State, kind: str, v) -> None:
    if kind == "none":
        return
    if kind == "alpha":
        st.alpha = v
    elif kind == "beta":
        st.beta = v
    elif kind == "alpha-beta":
        st.alpha, st.beta = v
    elif kind == "mbw":
        st.mbw = v
    elif kind == "pinpoint":
        st.pinpoint = v
    elif kind == "method":
        st.method = v
    elif kind == "seed":
        st.seed = v
    elif kind.startswith("model-"):
        i = "abc".index(kind[-1])
        while len(st.models) <= i:
            st.models.append("")
        st.models[i] = v
    elif kind == "prompt":
        st.prompt = v
    elif kind == "elemental":
        st.elemental = v
    elif kind == "adjust":
        st.adjust = v
    elif kind == "random":
        st.dice = v
