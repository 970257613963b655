"""The search config: one YAML file, validated by pydantic into a frozen SearchConfig.

Parsing is pure (structure, ranges, names); `check_inputs` then touches the world (model files,
their family, the storage server) so every mistake is reported before a trial starts.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.samplers import SAMPLERS


class ConfigError(ValueError):
    """A config that cannot run; the message names the file, the key and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    path: str = Field(min_length=1, description="file path (relative to the config file) or toyworld:NAME")


def check_bounds(value: tuple[float, float], where: str) -> tuple[float, float]:
    """Return ``value`` when low < high; else raise ValueError naming ``where`` (the config key) and the fix."""
    lo, hi = value
    if not lo < hi:
        raise ValueError(f"{where} [{lo}, {hi}] are inverted or empty; write [low, high] with low < high")
    return value


class LoraSearchSpec(_Frozen):
    """A kohya LoRA searched beside the models: one strength per group within ``bounds``.

    ``groups``: group name -> UNet blocks (ranges like IN00-IN11) and/or ``TE``; omitted = the
    space's block groups plus ``TE`` as its own group. Blocks in no group keep strength 0.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_+-]+$")
    path: str = Field(min_length=1, description="kohya LoRA file (relative to the config file)")
    bounds: tuple[float, float] = (0.0, 1.0)
    groups: dict[str, tuple[str, ...]] | None = None

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_bounds(value, "bounds")


class MethodSpec(_Frozen):
    """The merge method a search builds its candidates with (a method over a base and n models).

    params: each method parameter either fixed (a number) or searched per group within
    ``[low, high]``; parameters not named keep the method's default.
    """

    name: str = "affine"
    params: dict[str, float | tuple[float, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> MethodSpec:
        import difflib

        from merge_core.methods import METHODS, get_method

        method = get_method(self.name)  # unknown names: ValueError with the closest match
        if not method.model_weights:
            usable = [m.name for m in METHODS.values() if m.model_weights]
            raise ValueError(f"{method.name} is not a method over a base and n models; the search can use "
                             f"{', '.join(usable)}")
        object.__setattr__(self, "name", method.name)
        known = {p.name: p for p in method.params}
        for name, value in self.params.items():
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"params.{name}: {method.name} has no parameter {name!r}{hint} "
                                 f"(it has {', '.join(known) or 'none'})")
            p = known[name]
            if isinstance(value, tuple):
                lo, hi = check_bounds(value, f"params.{name}: bounds")
                p.check(lo, f"params.{name} (low)")
                p.check(hi, f"params.{name} (high)")
            else:
                p.check(float(value), f"params.{name}")
        return self

    @property
    def searched(self) -> dict[str, tuple[float, float]]:
        return {k: v for k, v in self.params.items() if isinstance(v, tuple)}


class SpaceSpec(_Frozen):
    parametrisation: Literal["affine", "simplex"] = "affine"
    method: MethodSpec = Field(default_factory=MethodSpec)
    # group name -> block ids or ranges ("IN00-IN03"); omitted = one group per UNet block
    groups: dict[str, tuple[str, ...]] | None = None
    # a named grouping instead of `groups` (search.presets: in-mid-out, depth4, blocks, *-attn-conv)
    preset: str | None = None
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    default_bounds: tuple[float, float] = (0.0, 1.0)
    # component (TE, VAE) -> "search" (its own dimension) or the name of the model it is held from
    components: dict[str, str] = Field(default_factory=lambda: {"TE": "search", "VAE": "search"})
    # Elemental search dimensions: group -> "BLOCKS:ELEMENTS" (e.g. "OUT03-OUT06:attn2"); the group's
    # weights apply to the keys of those blocks containing one of the substrings, over their block's group
    elemental: dict[str, str] = Field(default_factory=dict)

    @field_validator("bounds")
    @classmethod
    def _bounds_ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for group, bounds in value.items():
            check_bounds(bounds, f"bounds for {group!r}")
        return value

    @field_validator("default_bounds")
    @classmethod
    def _default_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_bounds(value, "default_bounds")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None:
            from search.presets import get_preset

            get_preset(value)  # ValueError naming the closest preset
        return value

    @model_validator(mode="after")
    def _groups_or_preset(self) -> SpaceSpec:
        if self.groups is not None and self.preset is not None:
            raise ValueError(f"give `groups` or `preset` ({self.preset!r}), not both")
        return self

    @model_validator(mode="after")
    def _weights_fit_method(self) -> SpaceSpec:
        from merge_core.methods import get_method

        low = get_method(self.method.name).weight_range[0]
        for group, (lo, _hi) in {"default_bounds": self.default_bounds, **self.bounds}.items():
            if lo < low:
                raise ValueError(f"bounds for {group!r} start at {lo} but {self.method.name} takes model weights "
                                 f">= {low:g}; use e.g. [{low:g}, 1.2]")
        return self

    @model_validator(mode="after")
    def _affine_bounds_hold_parents(self) -> SpaceSpec:
        # Baselines (each parent alone: w=0 or w=1) must be points of the space so the sampler sees them.
        if self.parametrisation == "affine":
            for group, (lo, hi) in {"default_bounds": self.default_bounds, **self.bounds}.items():
                if lo > 0 or hi < 1:
                    raise ValueError(
                        f"affine bounds for {group!r} are [{lo}, {hi}] but must include 0 and 1 so each parent "
                        "is a point of the space; widen them, e.g. [-0.3, 1.2]"
                    )
        return self


# RenderSpec fields that change how fast images are made, not which images: left out of the study's
# identity (a study may be resumed with another compile mode or batch) and of RenderSettings.
RENDER_SPEED_FIELDS = ("compile", "overlap", "batch")


class RenderSpec(_Frozen):
    """benchmark.RenderSettings fields; None keeps the renderer's default (e.g. the family's native size).

    Speed only (RENDER_SPEED_FIELDS): `compile` (benchmark.compile: off, auto, a torch.compile mode or a
    dynamo backend; falls back to eager with one warning where it cannot compile), `overlap` (decode and
    tag batch k while batch k+1 denoises; auto = on CUDA), `batch` (prompts per pipeline call; auto =
    chosen for the device, `objective.batch_size` on CPU; scores do not depend on it).
    """

    scheduler: str | None = None
    steps: int = Field(default=20, ge=1)
    cfg: float = Field(default=7.0, ge=0)
    width: int | None = Field(default=None, ge=8)
    height: int | None = Field(default=None, ge=8)
    clip_skip: int | None = Field(default=None, ge=1)
    compile: str = "off"
    overlap: Literal["auto", "on", "off"] = "auto"
    batch: int | Literal["auto"] = Field(default="auto")

    @field_validator("compile")
    @classmethod
    def _known_compile(cls, value: str) -> str:
        from benchmark.compile import check_compile

        return check_compile(value)

    @field_validator("batch")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"batch {value}: write a positive number of prompts per pipeline call, or auto")
        return value

    def settings(self) -> dict[str, Any]:
        """The benchmark.RenderSettings keyword arguments (what decides the images)."""
        return {k: v for k, v in self.model_dump().items() if v is not None and k not in RENDER_SPEED_FIELDS}


class ObjectiveSpec(_Frozen):
    # either a prompt-set file, or the recipe to generate one: (vocabulary, n, m, seed)
    prompts: str | None = None
    vocabulary: str | None = None
    n: int = Field(default=16, ge=1, description="prompts per split")
    # prompts of the confirm split that re-scores the leaders (None: n; 0: no confirmation)
    confirm: int | None = Field(default=None, ge=0)
    # prompts of the holdout split that checks the reported best (None: n). Only the baselines and the
    # best are rendered on it, so a larger holdout costs little and narrows the final paired interval.
    # Like n, its value seeds the draw: another size gives other prompts in every split.
    holdout: int | None = Field(default=None, ge=1)
    m: int = Field(default=3, ge=1, description="tags per prompt")
    seed: int = 0
    tagger: str = "toyworld"
    tagger_options: dict[str, Any] = Field(default_factory=dict)  # passed to the tagger (e.g. weights path)
    batch_size: int = Field(default=8, ge=1, description="prompts per render batch (one pruning step)")
    negative_penalty: float = Field(default=0.0, ge=0)
    render: RenderSpec = Field(default_factory=RenderSpec)

    @model_validator(mode="after")
    def _one_prompt_source(self) -> ObjectiveSpec:
        if (self.prompts is None) == (self.vocabulary is None):
            raise ValueError("give exactly one of `prompts` (a prompt-set file) or `vocabulary` (with n, m, seed)")
        return self


class ConfirmSpec(_Frozen):
    """Re-scoring of the leaders on the confirm split (the reported best is the best confirmed trial)."""

    top_k: int = Field(default=3, ge=1, description="leaders by search score confirmed in each round")
    every: int = Field(default=20, ge=1, description="a confirmation round after every this many finished trials")


class BudgetSpec(_Frozen):
    trials: int | None = Field(default=None, ge=1)
    hours: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetSpec:
        if self.trials is None and self.hours is None:
            raise ValueError("give `trials`, `hours` or both, or the search never stops")
        return self


class PrunerSpec(_Frozen):
    enabled: bool = True
    startup_trials: int = Field(default=5, ge=0, description="completed trials before pruning starts")
    warmup_batches: int = Field(default=1, ge=0, description="batches always rendered before a trial may stop")
    # stop a trial whose running score is under this percentile of completed trials' at the same batch;
    # 50 is Optuna's MedianPruner, lower is gentler (a few prompts are a noisy estimate)
    percentile: float = Field(default=30.0, gt=0, lt=100)


class WorkersSpec(_Frozen):
    backend: Literal["local", "ray"] = "local"
    count: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    address: str | None = None
    max_restarts: int = Field(default=2, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0, description="ray.wait timeout")
    # several drivers on one study: each beats for its trials in flight; another driver recovers a
    # trial whose beat is older than the grace period (search/liveness.py)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    grace_seconds: float = Field(default=30.0, gt=0)


class SearchConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="run name; the run folder is runs/<name>")
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    loras: tuple[LoraSearchSpec, ...] = ()  # LoRAs whose per-group strengths are searched too
    base: str | None = None  # the model weights are relative to (affine); default: the first model
    family: str | None = None  # checked against what the files say when given
    renderer: str | None = None  # family config folder under configs/families (default: the family)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    objective: ObjectiveSpec
    sampler: str = "auto"
    # completed trials (baselines included) before `auto` leaves its Sobol start for the GP (tpe and
    # cmaes: finished trials before they leave their random start; random ignores it);
    # None: search.study.default_startup
    sampler_startup: int | None = Field(default=None, ge=0)
    seed: int = 0
    budget: BudgetSpec
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    storage: str | None = None  # default sqlite:///runs/<name>/study.db
    runs_dir: str = "runs"
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    holdout: bool = True
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    # where relative paths are resolved from: the config file's folder (set by load_config)
    root: str = "."

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; choose one of {', '.join(sorted(SAMPLERS))}")
        return value

    @model_validator(mode="after")
    def _names(self) -> SearchConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if len(names) < 2 and not self.loras:
            raise ValueError("models: a search needs two models, or one model and a LoRA (loras:)")
        lora_names = [lo.name for lo in self.loras]
        if len(set(lora_names)) != len(lora_names) or set(lora_names) & set(names):
            raise ValueError(f"loras: names must be unique and differ from the models' ({lora_names})")
        if self.base is not None and self.base not in names:
            raise ValueError(f"base {self.base!r} is not one of the models {names}")
        if self.budget.trials is not None and self.confirm.top_k > self.budget.trials:
            if "top_k" in self.confirm.model_fields_set:  # the user asked for it: say why it cannot be
                raise ValueError(f"confirm.top_k is {self.confirm.top_k} but budget.trials is {self.budget.trials}: "
                                 "it cannot confirm more leaders than there are trials; lower confirm.top_k")
            object.__setattr__(self, "confirm", self.confirm.model_copy(update={"top_k": self.budget.trials}))
        for comp, how in self.space.components.items():
            if how != "search" and how not in names:
                raise ValueError(
                    f"space.components.{comp} = {how!r}: write 'search' or the name of a model to hold it from ({names})"
                )
        return self

    # ---- derived, pure -------------------------------------------------------------------------
    @property
    def ordered_models(self) -> tuple[ModelSpec, ...]:
        """Models with the base first: the affine form is relative to sources[0]."""
        base = self.base or self.models[0].name
        return tuple(sorted(self.models, key=lambda m: m.name != base))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.root) / p

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').as_posix()}"

    def identity(self) -> dict[str, Any]:
        """What a study may not change on resume: the space and the benchmark (and what they run on)."""
        return {
            "models": [m.model_dump() for m in self.ordered_models],
            "family": self.family,
            "renderer": self.renderer,
            "space": self.space.model_dump(mode="json"),
            "objective": self.objective.model_dump(mode="json", exclude={"render": set(RENDER_SPEED_FIELDS)}),
            **({"loras": [lo.model_dump(mode="json") for lo in self.loras]} if self.loras else {}),
        }

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_errors(path: str, exc: ValidationError, options: dict[str, tuple[str, Any]] | None = None) -> str:
    """One line per error naming the file and the key, or the command-line option that set it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing; add this key"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against configs/toyworld.yaml"
        if options and key in options:
            option, value = options[key]
            lines.append(f"{option} {value}: {msg} (this option overrides {key} of {path})")
        else:
            lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "<config>", root: str | Path = ".",
                 options: dict[str, tuple[str, Any]] | None = None) -> SearchConfig:
    """`options`: {dotted key: (command-line option, value)} for keys the command line set, so an
    error in one of them names the option rather than the file."""
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise ConfigError(f"{source}: not a mapping of settings (the file holds {kind}); a config is keys "
                          "such as name, models, objective, budget: see configs/toyworld.yaml")
    try:
        return SearchConfig.model_validate({**data, "root": str(root)})
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, options)) from None


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None,
                option_names: dict[str, str] | None = None) -> SearchConfig:
    """Read and validate a YAML config; relative paths inside it resolve from its folder.

    `overrides`: {dotted key: value} set over the file; `option_names`: {dotted key: "--option"} so an
    invalid override is blamed on its option. Raises ConfigError (one line per fault, never a traceback)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text); is this the right file?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); is this the right file?")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        parse_config(data, source=str(path))  # raises: not a mapping of settings
    data = dict(data)
    options = {}
    for key, value in (overrides or {}).items():
        try:
            _set_dotted(data, key, value)
        except (AttributeError, TypeError):
            raise ConfigError(f"{path}: {key.rsplit('.', 1)[0]} is not a mapping, so it cannot take "
                              f"{key}; fix the file") from None
        if option_names and key in option_names:
            options[key] = (option_names[key], value)
    return parse_config(data, source=str(path), root=path.parent.resolve(), options=options)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


_RANGE = re.compile(r"^([A-Z]+)(\d+)-([A-Z]+)(\d+)$")


def expand_blocks(items: tuple[str, ...], blocks: tuple[str, ...]) -> tuple[str, ...]:
    """Expand 'IN00-IN03' style ranges against a layout's block order; unknown ids raise ValueError."""
    out: list[str] = []
    for item in items:
        m = _RANGE.match(item)
        if m:
            lo, hi = f"{m[1]}{m[2]}", f"{m[3]}{m[4]}"
            if lo not in blocks or hi not in blocks:
                raise ValueError(f"range {item!r} names a block that is not one of {blocks[0]}..{blocks[-1]}")
            i, j = blocks.index(lo), blocks.index(hi)
            if i > j:
                raise ValueError(f"range {item!r} runs backwards; write it low-high")
            out.extend(blocks[i : j + 1])
        elif item in blocks:
            out.append(item)
        else:
            raise ValueError(f"unknown block {item!r}; blocks are {', '.join(blocks)}")
    return tuple(out)
