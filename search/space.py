"""The search space: Optuna params <-> per-block merge coefficients <-> Recipe. Pure maths.

Two parametrisations over n models (sources[0] is the base):
- affine: one weight w_i per (non-base model, group) in the group's bounds; coefficients
  (1 - sum w, w_1..w_k), so weights may be negative or sum past 1.
- simplex: stick-breaking, n-1 params u_k in [0, 1] per group. v_k = 1 - (1-u_k)^(1/(n-k)) makes
  v_k ~ Beta(1, n-k) under uniform u, which makes the coefficients uniform-Dirichlet (never the
  u/sum(u) normalisation, which crowds the centre). c_k = v_k * prod_{j<k}(1 - v_j).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search.config import SpaceSpec, expand_blocks

if TYPE_CHECKING:
    import optuna

Params = dict[str, float]

METHOD_BASELINE_PREFIX = "uniform:"


def method_baseline_label(method: str) -> str:
    """The baseline label of a method's one-click merge (its defaults, every model alike): "uniform:ties"."""
    return METHOD_BASELINE_PREFIX + method


def is_merge_baseline(label: str) -> bool:
    """True for the baselines that are merges, not parents: "uniform" and "uniform:<method>"."""
    return label == "uniform" or label.startswith(METHOD_BASELINE_PREFIX)


def is_linear_baseline(label: str | None) -> bool:
    """True for the baselines built as plain linear merges whatever the method: "parent:<name>", "uniform"."""
    return label is not None and not label.startswith(METHOD_BASELINE_PREFIX)


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float
    high: float


@dataclass(frozen=True)
class SearchSpace:
    models: tuple[str, ...]  # base first
    parametrisation: str
    groups: dict[str, tuple[str, ...]]  # searched group -> weight ids (blocks, or a component)
    held: dict[str, str]  # weight id -> model it is taken from whole
    bounds: dict[str, tuple[float, float]]  # searched group -> (lo, hi) (affine only)
    weight_ids: tuple[str, ...]  # every weight id of the layout, in layout order
    method: str = "affine"  # a merge method over a base and n models (merge_core.methods)
    # the method's parameters: a fixed value, or (lo, hi) searched per group
    method_params: tuple[tuple[str, float | tuple[float, float]], ...] = ()
    # LoRAs searched beside the models: (name, {group: weight ids (blocks and/or TE)}, (lo, hi))
    loras: tuple[tuple[str, dict[str, tuple[str, ...]], tuple[float, float]], ...] = ()
    # groups searched for the attention keys of their blocks only (search.presets *-attn-conv); they
    # become per-key rules of the recipe, over the block weight of their `_conv` twin
    attention: tuple[str, ...] = field(default=())
    # element groups (`space.elemental`, and the attn-conv presets' `_attn` groups): group -> the key
    # substrings its weights apply to within its blocks (absent: search.presets.ATTENTION_ELEMENTS)
    elements: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # ---- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: SpaceSpec, models: tuple[str, ...], blocks: tuple[str, ...],
              components: tuple[str, ...], loras: tuple[Any, ...] = (), *,
              attention_blocks: frozenset[str] | None = None) -> SearchSpace:
        """Raise ValueError (naming the config key) when groups or components do not fit the layout.

        ``loras``: search.config.LoraSearchSpec entries (strength groups and bounds per LoRA).
        `attention_blocks`: the blocks that hold attention keys (from the checkpoints); an attn-conv
        preset splits only the groups that have one (None = split every group)."""
        attention: list[str] = []
        if spec.preset is not None:
            from search.presets import KIND_SUFFIX, get_preset

            preset = get_preset(spec.preset)
            try:
                base_groups = preset.groups(tuple(blocks))
            except ValueError as exc:
                raise ValueError(f"space.preset: {exc}") from None
            groups = {}
            for name, ids in base_groups.items():
                has_attention = attention_blocks is None or any(b in attention_blocks for b in ids)
                if preset.split and has_attention:
                    groups[name + KIND_SUFFIX["attn"]] = ids
                    groups[name + KIND_SUFFIX["conv"]] = ids
                    attention.append(name + KIND_SUFFIX["attn"])
                else:
                    groups[name] = ids
        elif spec.groups is None:
            groups = {b: (b,) for b in blocks}
        else:
            groups = {}
            seen: dict[str, str] = {}
            for name, items in spec.groups.items():
                try:
                    ids = expand_blocks(tuple(items), blocks)
                except ValueError as exc:
                    raise ValueError(f"space.groups.{name}: {exc}") from None
                for b in ids:
                    if b in seen:
                        raise ValueError(f"space.groups.{name}: block {b} is already in group {seen[b]}")
                    seen[b] = name
                groups[name] = ids
            missing = [b for b in blocks if b not in seen]
            if missing:
                raise ValueError(f"space.groups: blocks {', '.join(missing)} are in no group; add them to one")
        elements: dict[str, tuple[str, ...]] = {}
        for name, text in spec.elemental.items():
            if name in groups:
                raise ValueError(f"space.elemental.{name}: a group of that name exists; rename it")
            blocks_text, sep, elements_text = text.partition(":")
            if not sep or not elements_text.split() or "NOT" in text.split():
                raise ValueError(f"space.elemental.{name}: write 'BLOCKS:ELEMENTS' (e.g. 'OUT03-OUT06:attn2'), "
                                 f"blocks and key substrings separated by spaces, no NOT; got {text!r}")
            try:
                ids = expand_blocks(tuple(blocks_text.split()), blocks) if blocks_text.strip() else tuple(blocks)
            except ValueError as exc:
                raise ValueError(f"space.elemental.{name}: {exc}") from None
            groups[name] = ids
            attention.append(name)
            elements[name] = tuple(elements_text.split())
        held: dict[str, str] = {}
        unknown = set(spec.components) - set(components)
        if unknown:
            raise ValueError(f"space.components: unknown component(s) {sorted(unknown)}; this family has {components}")
        for comp in components:
            how = spec.components.get(comp, "search")
            if how == "search":
                if comp in groups:
                    raise ValueError(f"space.groups: {comp!r} is a component name; rename the group")
                groups[comp] = (comp,)
            else:
                held[comp] = how
        unknown_bounds = set(spec.bounds) - set(groups)
        if unknown_bounds:
            raise ValueError(f"space.bounds: no group named {sorted(unknown_bounds)}; groups are {list(groups)}")
        bounds = {g: tuple(spec.bounds.get(g, spec.default_bounds)) for g in groups}
        lora_dims = []
        for lora in loras:
            if lora.groups is None:
                # the space's groups (an attn-conv split's `_conv` group stands for its blocks)
                lgroups = {g: ids for g, ids in groups.items() if g not in components and g not in attention}
                lgroups["TE"] = ("TE",)
            else:
                lgroups = {}
                for name, items in lora.groups.items():
                    te = tuple(i for i in items if i == "TE")
                    try:
                        lgroups[name] = expand_blocks(tuple(i for i in items if i != "TE"), blocks) + te
                    except ValueError as exc:
                        raise ValueError(f"loras.{lora.name}.groups.{name}: {exc}") from None
            lora_dims.append((lora.name, lgroups, tuple(lora.bounds)))
        return cls(models=tuple(models), parametrisation=spec.parametrisation, groups=groups, held=held,
                   bounds=bounds, weight_ids=tuple(blocks) + tuple(components), method=spec.method.name,
                   method_params=tuple(spec.method.params.items()), loras=tuple(lora_dims),
                   attention=tuple(attention), elements=elements)

    # ---- params ----------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.models)

    def dimensions(self) -> list[Dimension]:
        dims = []
        searched = self.searched_method_params
        for g in self.groups:
            if self.parametrisation == "affine":
                lo, hi = self.bounds[g]
                dims += [Dimension(f"{g}.{m}", lo, hi) for m in self.models[1:]]
            else:
                dims += [Dimension(f"{g}.u{k}", 0.0, 1.0) for k in range(1, self.n)]
            dims += [Dimension(f"{g}.{name}", lo, hi) for name, (lo, hi) in searched.items()]
        for name, lgroups, (lo, hi) in self.loras:
            dims += [Dimension(f"lora.{name}.{g}", lo, hi) for g in lgroups]
        return dims

    def lora_strengths(self, params: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """LoRA name -> {weight id: strength} of a trial's params (weight ids in no group: absent = 0)."""
        return {name: {wid: float(params[f"lora.{name}.{g}"]) for g, ids in lgroups.items() for wid in ids}
                for name, lgroups, _ in self.loras}

    @property
    def searched_method_params(self) -> dict[str, tuple[float, float]]:
        return {k: tuple(v) for k, v in self.method_params if isinstance(v, (tuple, list))}

    def method_values(self, params: Mapping[str, float], group: str | None) -> dict[str, float]:
        """The method's named parameters for one group (``None``: a held component -> identity values)."""
        from merge_core.methods import get_method

        method = get_method(self.method)
        if group is None:
            return {**method.defaults(), **method.identity}
        values = method.defaults()
        for name, v in self.method_params:
            values[name] = float(params[f"{group}.{name}"]) if isinstance(v, (tuple, list)) else float(v)
        return values

    def suggest(self, trial: optuna.Trial) -> Params:
        return {d.name: trial.suggest_float(d.name, d.low, d.high) for d in self.dimensions()}

    def group_coefficients(self, params: Mapping[str, float], group: str) -> tuple[float, ...]:
        if self.parametrisation == "affine":
            w = [float(params[f"{group}.{m}"]) for m in self.models[1:]]
            return (1.0 - sum(w), *w)
        coeffs, rest = [], 1.0
        for k in range(1, self.n):
            u = min(max(float(params[f"{group}.u{k}"]), 0.0), 1.0)
            v = 1.0 - (1.0 - u) ** (1.0 / (self.n - k))
            coeffs.append(rest * v)
            rest *= 1.0 - v
        return (*coeffs, rest)

    def coefficients(self, params: Mapping[str, float]) -> dict[str, tuple[float, ...]]:
        """One linear coefficient per model for every weight id, in layout order."""
        out: dict[str, tuple[float, ...]] = {}
        for g, ids in self.groups.items():
            if g in self.attention:  # per-key rules (attention_rules), not block weights
                continue
            c = self.group_coefficients(params, g)
            for wid in ids:
                out[wid] = c
        for wid, model in self.held.items():
            out[wid] = tuple(1.0 if m == model else 0.0 for m in self.models)
        return {wid: out[wid] for wid in self.weight_ids}

    def affine_weights(self, params: Mapping[str, float]) -> dict[str, tuple[float, ...]]:
        """The Recipe's `affine` weights: the non-base coefficients."""
        return {wid: c[1:] for wid, c in self.coefficients(params).items()}

    def attention_coefficients(self, params: Mapping[str, float]) -> dict[str, tuple[float, ...]]:
        """Attention groups only: {group: one coefficient per model} for the attention keys of its blocks."""
        return {g: self.group_coefficients(params, g) for g in self.attention}

    def negative_mass(self, params: Mapping[str, float]) -> float:
        """Mean over weight ids (and attention parts) of the summed magnitude of negative coefficients
        (0 inside the simplex). For a method other than `affine` (TIES, DARE, ...) the base is not one
        of the summands, so only the models' own weights count, not the affine base share 1 - sum w."""
        skip = 0 if self.method == "affine" else 1
        coeffs = [c[skip:] for c in self.coefficients(params).values()]
        for g, c in self.attention_coefficients(params).items():
            coeffs += [c[skip:]] * len(self.groups[g])
        n = len(self.weight_ids) + sum(len(self.groups[g]) for g in self.attention)
        return sum(sum(-x for x in c if x < 0) for c in coeffs) / max(n, 1)

    def attention_rules(self, params: Mapping[str, float], *, method: Any = None) -> tuple[Any, ...]:
        """merge_core ElementalEntry rules giving the matching keys of each element group's blocks (attention
        keys for the presets' `_attn` groups, the configured substrings for `space.elemental` groups) their
        own parameter vector (the affine weights, then `method`'s parameters for that group when given);
        later rules win over the block weight."""
        from merge_core.elemental import ElementalEntry
        from search.presets import ATTENTION_ELEMENTS

        rules = []
        for g, c in self.attention_coefficients(params).items():
            ids = tuple(self.groups[g])
            elements = self.elements.get(g, ATTENTION_ELEMENTS)
            ratio = tuple(float(x) for x in c[1:])
            if method is not None:
                values = self.method_values(params, g)
                ratio += tuple(float(values[p.name]) for p in method.params)
            rules.append(ElementalEntry(blocks=ids, elements=elements, ratio=ratio,
                                        text=f"{' '.join(ids)}:{' '.join(elements)}:"
                                             f"{'/'.join(f'{x:g}' for x in ratio)}"))
        return tuple(rules)

    # ---- baselines -------------------------------------------------------------------------------
    def params_for_group_coefficients(self, target: tuple[float, ...]) -> dict[str, float]:
        """Params giving `target` coefficients in every group: the linear baselines' params, and the
        start of `method_default_params`.

        Searched method parameters take the method's identity values clipped into their bounds:
        a linear baseline's recipe is the plain linear merge whatever the method (see ``recipe``).
        The samplers read these params as the method's: a parent is that point exactly when the
        identity values lie inside the bounds (TIES density 1 and lambda 1, DARE drop 0); the linear
        `uniform` merge is not a point of a TIES space (TIES normalises by the weights), so a GP sees
        its score at a nearby TIES merge (density 1), away from where good TIES merges lie.
        """
        from merge_core.methods import get_method

        identity = {**get_method(self.method).defaults(), **get_method(self.method).identity}
        out: dict[str, float] = {}
        for g in self.groups:
            for name, (lo, hi) in self.searched_method_params.items():
                out[f"{g}.{name}"] = min(max(identity[name], lo), hi)
            if self.parametrisation == "affine":
                out.update({f"{g}.{m}": float(target[i + 1]) for i, m in enumerate(self.models[1:])})
            else:
                rest = 1.0
                for k in range(1, self.n):
                    c = target[k - 1]
                    v = 0.0 if rest <= 1e-12 else min(max(c / rest, 0.0), 1.0)
                    out[f"{g}.u{k}"] = 1.0 - (1.0 - v) ** (self.n - k)
                    rest *= 1.0 - v
        for name, lgroups, (lo, hi) in self.loras:  # baselines: the LoRAs off (0 clipped into their bounds)
            out.update({f"lora.{name}.{g}": min(max(0.0, lo), hi) for g in lgroups})
        return out

    def baselines(self) -> list[tuple[str, Params]]:
        """Each parent alone, then the uniform merge, then (for a method other than `affine`) the
        method's own one-click merge, `uniform:<method>` (held components stay held in all of them)."""
        out = []
        for i, m in enumerate(self.models):
            onehot = tuple(1.0 if j == i else 0.0 for j in range(self.n))
            out.append((f"parent:{m}", self.params_for_group_coefficients(onehot)))
        if self.n > 1:  # with one model the uniform merge is that model
            out.append(("uniform", self.params_for_group_coefficients(tuple(1.0 / self.n for _ in range(self.n)))))
            if self.method != "affine":
                out.append((method_baseline_label(self.method), self.method_default_params()))
        return out

    def method_default_params(self) -> Params:
        """Params of the space's method as a user would run it by hand: its default parameters (clipped
        into their searched bounds; parameters the config fixes keep their value) in every group, every
        model alike (affine: weight 1, the whole task vector as the TIES and DARE papers merge them;
        simplex: 1/n each, the same merge for TIES, which normalises by the weights, a weaker one for
        DARE). LoRAs off. The search enqueues it as the `uniform:<method>` baseline: the merge
        the searched ones must beat, and a known-good point for the sampler to start from."""
        from merge_core.methods import get_method

        out = self.params_for_group_coefficients(tuple(1.0 / self.n for _ in range(self.n)))
        defaults = get_method(self.method).defaults()
        for g in self.groups:
            for name, (lo, hi) in self.searched_method_params.items():
                out[f"{g}.{name}"] = min(max(defaults[name], lo), hi)
            if self.parametrisation == "affine":
                lo, hi = self.bounds[g]
                out.update({f"{g}.{m}": min(max(1.0, lo), hi) for m in self.models[1:]})
        return out

    # ---- recipe ----------------------------------------------------------------------------------
    def recipe(self, params: Mapping[str, float], *, family: Any, sources: tuple[Any, ...], dtype: str = "fp16",
               seed: int | None = None, baseline: str | None = None, loras: tuple[Any, ...] = ()) -> Any:
        """The Recipe of a trial's params. Baselines (each parent, the uniform merge) are always the
        plain linear (affine) merge, so they are the same models whatever method the search uses;
        other trials and the `uniform:<method>` baseline use the space's method, with held components
        at the method's identity values.
        ``seed`` goes into recipes of random methods (DARE). ``loras``: merge_core.recipe.LoraUse per
        searched LoRA (path, sha256, name; in config order), given this trial's strengths."""
        from merge_core import Recipe
        from merge_core.methods import get_method

        method = get_method(self.method)
        strengths = self.lora_strengths(params)
        uses = tuple(u.model_copy(update={"strengths": strengths[u.name]}) for u in loras)
        if is_linear_baseline(baseline) or method.name == "affine":
            return Recipe(family=family, method="affine", sources=tuple(sources),
                          weights=self.affine_weights(params), dtype=dtype, keep_ema=False, loras=uses,
                          elemental=self.attention_rules(params))
        group_of = {wid: g for g, ids in self.groups.items() if g not in self.attention for wid in ids}
        weights = {}
        for wid, coeffs in self.coefficients(params).items():
            values = self.method_values(params, group_of.get(wid))
            weights[wid] = tuple(coeffs[1:]) + tuple(values[p.name] for p in method.params)
        return Recipe(family=family, method=method.name, sources=tuple(sources), weights=weights, dtype=dtype,
                      keep_ema=False, seed=seed if method.random else None, loras=uses,
                      elemental=self.attention_rules(params, method=method))
