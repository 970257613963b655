"""The Mixer: n sources resident on a worker, grouped by block, written into a live pipeline in place.

`apply(recipe)` sets every live parameter p of block b to sum_i c[i, b] * theta_i[p] with fused
foreach ops: no state-dict copies, no disk, no pipeline rebuild per trial. Recipes of non-linear
methods (TIES, DARE, SLERP, calc modes) run the registered method key by key on the single-file
view of each key, exactly as the streaming merger does, so both engines give the same tensors.

Which block a live (diffusers-named) parameter belongs to is found without any name table: a
state dict whose every tensor holds its block's index is run through the renderer's own key
conversion, so each converted tensor is constant and names its block. Parameters with no block
(non-mergeable keys) are copied from the first source once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class MixerError(ValueError):
    pass


@dataclass
class _Part:
    """One live parameter as a piece of a single-file key: a view (reshape or transpose) or a dim-0 slice."""

    live: torch.Tensor
    sources: list[torch.Tensor]  # per source, in the live layout
    kind: str  # "reshape" | "transpose" | "rows"
    start: int = 0  # first row of the key (kind "rows")


@dataclass
class _SingleFileKey:
    key: str
    block: str
    shape: tuple[int, ...]
    parts: list[_Part]

    def source(self, i: int) -> torch.Tensor:
        """Source i of this key in the single-file layout (a view where the layout allows)."""
        if len(self.parts) == 1 and self.parts[0].kind != "rows":
            t = self.parts[0].sources[i]
            return t.reshape(self.shape) if self.parts[0].kind == "reshape" else t.T
        return torch.cat([p.sources[i] for p in sorted(self.parts, key=lambda p: p.start)], dim=0)

    def add(self, delta: torch.Tensor) -> None:
        """Add a single-file-shaped fp32 ``delta`` to the live parameters (a LoRA on top of the merge)."""
        for p in self.parts:
            if p.kind == "reshape":
                p.live.add_(delta.reshape(p.live.shape).to(device=p.live.device, dtype=p.live.dtype))
            elif p.kind == "transpose":
                p.live.add_(delta.T.to(device=p.live.device, dtype=p.live.dtype))
            else:
                p.live.add_(delta[p.start : p.start + p.live.shape[0]].to(device=p.live.device, dtype=p.live.dtype))

    def write(self, merged: torch.Tensor) -> None:
        for p in self.parts:
            if p.kind == "reshape":
                p.live.copy_(merged.reshape(p.live.shape))
            elif p.kind == "transpose":
                p.live.copy_(merged.T)
            else:
                p.live.copy_(merged[p.start : p.start + p.live.shape[0]])


def _place(live_src0: torch.Tensor, sf: torch.Tensor) -> tuple[str, int] | None:
    """How a live parameter (source 0's value) sits in its single-file tensor, found by value."""
    if live_src0.numel() == sf.numel() and torch.equal(live_src0.reshape(-1), sf.reshape(-1).to(live_src0.dtype)):
        return "reshape", 0
    if sf.ndim == 2 and live_src0.shape == sf.T.shape and torch.equal(live_src0, sf.T.to(live_src0.dtype)):
        return "transpose", 0
    rows = live_src0.shape[0] if live_src0.ndim else 0
    if rows and sf.ndim and sf.shape[1:] == live_src0.shape[1:] and sf.shape[0] % rows == 0:
        for start in range(0, sf.shape[0], rows):
            if torch.equal(live_src0, sf[start : start + rows].to(live_src0.dtype)):
                return "rows", start
    return None


@dataclass
class _Group:
    live: list[torch.Tensor]  # live parameters of this block, across modules
    sources: list[list[torch.Tensor]]  # per source: tensors aligned with `live`


def _block_index_dict(state_dict: Mapping[str, torch.Tensor], layout: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    ids = list(layout.weight_ids)
    out = {}
    for key, t in state_dict.items():
        block = layout.block_of(key)
        out[key] = torch.full(t.shape, ids.index(block) if block is not None else -1,
                              dtype=t.dtype if t.is_floating_point() else torch.float32)
    return out, ids


def live_blocks(renderer: Any, state_dict: Mapping[str, torch.Tensor], layout: Any) -> dict[str, dict[str, str | None]]:
    """{module: {param name: weight id or None}} through the renderer's own conversion."""
    filled, ids = _block_index_dict(state_dict, layout)
    converted = renderer.convert(filled)
    out: dict[str, dict[str, str | None]] = {}
    for module, tensors in converted.items():
        out[module] = {}
        for name, t in tensors.items():
            if t.numel() == 0:
                out[module][name] = None
                continue
            t = t.float()
            lo, hi = float(t.min()), float(t.max())
            if lo != hi:
                raise MixerError(f"{module}.{name} mixes keys of several blocks in the renderer's conversion; "
                                 "it cannot be merged per block")
            out[module][name] = ids[int(lo)] if lo >= 0 else None
    return out


def choose_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Mixer:
    """Sources resident once per worker; `apply(recipe)` writes the merge into `renderer.modules`.

    `sources`: paths (or already loaded single-file state dicts), base first, as in the Recipe.
    On GPU the sources are kept on the GPU in fp16 when they fit, else in pinned CPU memory.
    """

    def __init__(self, renderer: Any, sources: Sequence[Any], *, family: Any | None = None,
                 source_device: str | torch.device | None = None, source_dtype: torch.dtype | None = None) -> None:
        from merge_core import layout_for, load_state_dict

        self.renderer = renderer
        self.modules = dict(renderer.modules)
        live_params = {m: dict(mod.named_parameters()) for m, mod in self.modules.items()}
        live_device = next(iter(next(iter(live_params.values())).values())).device
        self.device = live_device
        dicts = [load_state_dict(s) if not isinstance(s, Mapping) else s for s in sources]
        self.layout = layout_for(family or renderer.family)
        blocks = live_blocks(renderer, dicts[0], self.layout)
        converted = []
        for i, sd in enumerate(dicts):
            c = renderer.convert(sd)
            converted.append(c)
            if i:
                dicts[i] = None  # free the single-file copy as soon as it is converted
        src_dtype = source_dtype or (torch.float16 if live_device.type == "cuda" else torch.float32)
        src_device = torch.device(source_device) if source_device else self._fitting_device(converted, src_dtype)
        pin = src_device.type == "cpu" and torch.cuda.is_available() and live_device.type == "cuda"
        self.groups: dict[str, _Group] = {}
        self._resident: dict[tuple[str, str], list[torch.Tensor]] = {}  # (module, name) -> per-source tensors
        self.source_bytes = 0
        with torch.no_grad():
            for module, params in live_params.items():
                for name, p in params.items():
                    block = blocks[module].get(name)
                    if name not in converted[0][module]:
                        raise MixerError(f"live parameter {module}.{name} has no source tensor")
                    if block is None:  # not mergeable: first source's value, once
                        p.copy_(converted[0][module][name])
                        continue
                    g = self.groups.setdefault(block, _Group(live=[], sources=[[] for _ in converted]))
                    g.live.append(p)
                    resident = self._resident.setdefault((module, name), [])
                    for i, c in enumerate(converted):
                        t = c[module][name].to(device=src_device, dtype=src_dtype)
                        if pin:
                            t = t.pin_memory()
                        self.source_bytes += t.numel() * t.element_size()
                        g.sources[i].append(t)
                        resident.append(t)
        self.keys = self._single_file_keys(renderer, dicts[0], converted, live_params, blocks, src_device, src_dtype)
        self.n_sources = len(converted)
        self.source_device = src_device
        self._prepared: dict[str, Any] = {}
        self.last_apply_seconds = 0.0
        self._flat: torch.Tensor | None = None
        self._scratch_views: dict[str, list[torch.Tensor]] = {}
        self._lora_cache: dict[str, Any] = {}  # LoRA path -> LoraFile, read once per worker
        self._lora_targets: dict[str, Any] | None = None

    def _single_file_keys(self, renderer, sd0, converted, live_params, blocks, src_device, src_dtype):
        """Map each mergeable single-file key to the live parameters it becomes (see _place)."""
        keys = [k for k in sd0 if self.layout.block_of(k) is not None and sd0[k].is_floating_point()]
        index = {k: i for i, k in enumerate(keys)}
        # constant tensors naming their key (expanded: no memory per element); float32 holds the index exactly
        filled = {k: torch.full((), float(index.get(k, -1)), dtype=torch.float32).expand(t.shape)
                  if t.is_floating_point() else t for k, t in sd0.items()}
        named = renderer.convert(filled)
        out: dict[str, _SingleFileKey] = {}
        for module, params in live_params.items():
            for name, p in params.items():
                block = blocks[module].get(name)
                if block is None:
                    continue
                t = named[module][name]
                i = int(t.reshape(-1)[0]) if t.numel() else -1
                if i < 0 or not bool((t == i).all()):
                    raise MixerError(f"{module}.{name} does not come from one single-file key; it cannot be "
                                     "merged by a per-tensor method")
                key = keys[i]
                place = _place(converted[0][module][name], sd0[key])
                if place is None:
                    raise MixerError(f"{module}.{name}: cannot tell how it sits in {key}")
                entry = out.setdefault(key, _SingleFileKey(key, block, tuple(sd0[key].shape), []))
                entry.parts.append(_Part(p, self._resident[(module, name)], *place))
        return out

    @staticmethod
    def _fitting_device(converted: list[dict[str, dict[str, torch.Tensor]]], dtype: torch.dtype) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        need = sum(t.numel() for c in converted for m in c.values() for t in m.values()) * dtype.itemsize
        free, _total = torch.cuda.mem_get_info()
        # leave room for activations of the render (a few GB on SDXL at batch 4)
        return torch.device("cuda") if need < free - 6 * 2**30 else torch.device("cpu")

    @torch.no_grad()
    def apply(self, recipe: Any) -> float:
        """Write the recipe's merge into the live modules; returns the seconds it took."""
        t0 = time.perf_counter()
        if hasattr(recipe, "linear") and not recipe.linear:
            self._apply_method(recipe)
            self._apply_loras(recipe)
            self.last_apply_seconds = time.perf_counter() - t0
            return self.last_apply_seconds
        coeffs = recipe.coefficients() if hasattr(recipe, "coefficients") else recipe
        if any(len(c) != self.n_sources for c in coeffs.values()):
            raise MixerError(f"recipe has {len(next(iter(coeffs.values())))} sources, the mixer holds {self.n_sources}")
        for block, g in self.groups.items():
            c = coeffs[block]
            for i, src in enumerate(g.sources):
                if src[0].device != self.device:
                    src = [t.to(self.device, non_blocking=True) for t in src]
                if i > 0 and src[0].dtype != g.live[0].dtype:
                    # a mixed-dtype add is ~10x slower on CPU than a cast into scratch plus a same-dtype add
                    scratch = self._scratch(block, g)
                    torch._foreach_copy_(scratch, src)
                    src = scratch
                if i == 0:
                    torch._foreach_copy_(g.live, src)
                    torch._foreach_mul_(g.live, float(c[0]))
                elif c[i] != 0.0:
                    torch._foreach_add_(g.live, src, alpha=float(c[i]))
        if hasattr(recipe, "coefficients"):
            from search.mixer_rules import apply_key_rules

            apply_key_rules(self, recipe)  # Elemental, include/exclude, Adjust (no-op without them)
            self._apply_loras(recipe)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.last_apply_seconds = time.perf_counter() - t0
        return self.last_apply_seconds

    def _apply_method(self, recipe: Any) -> None:
        """Run a non-linear method key by key on the single-file view of the resident sources."""
        from merge_core.methods import KeyContext, get_method

        method = get_method(recipe.method)
        if len(recipe.sources) != self.n_sources:
            raise MixerError(f"recipe has {len(recipe.sources)} sources, the mixer holds {self.n_sources}")
        state = None
        if method.prepare is not None:
            if method.name not in self._prepared:
                pairs = ((k, [e.source(i).float() for i in range(self.n_sources)])
                         for k, e in self.keys.items() if not (method.skip and method.skip(k)))
                self._prepared[method.name] = method.prepare(pairs)
            state = self._prepared[method.name]
        from merge_core.adjust import apply_op
        from search.mixer_rules import adjust_ops, key_vector

        ops = adjust_ops(recipe)
        for key, entry in self.keys.items():
            vector = key_vector(recipe, key, entry.block)  # Elemental / include-exclude
            if vector is None:  # held from model A
                entry.write(entry.source(0).to(self.device))
                continue
            uses = method.uses(vector, self.n_sources)
            tensors = [entry.source(i if u else 0).to(self.device).float() for i, u in enumerate(uses)]
            merged = method.apply(tensors, vector, KeyContext(key, entry.shape, 0, recipe.seed, state))
            entry.write(apply_op(merged, ops[key]) if key in ops else merged)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _apply_loras(self, recipe: Any) -> None:
        """Add the recipe's LoRAs (``Recipe.loras``) at their per-block strengths, after the merge and its
        key rules, as the streaming merger does. Factors stay resident; only strengths change per trial."""
        loras = getattr(recipe, "loras", ())
        if not loras:
            return
        from merge_core.lora.apply import apply_deltas, recipe_lora_deltas
        from merge_core.lora.names import lora_targets

        view = _KeyView(self.layout.family, {k: e.shape for k, e in self.keys.items()})
        if self._lora_targets is None:
            self._lora_targets = lora_targets(view)
        deltas = recipe_lora_deltas(loras, view, cache=self._lora_cache, targets=self._lora_targets)
        for key, ds in deltas.items():
            entry = self.keys[key]
            entry.add(apply_deltas(torch.zeros(entry.shape), ds))

    def _scratch(self, block: str, g: _Group) -> list[torch.Tensor]:
        """Views into one flat buffer the size of the largest block (allocated on first use)."""
        if block not in self._scratch_views:
            size = max(sum(t.numel() for t in grp.live) for grp in self.groups.values())
            if self._flat is None:
                self._flat = torch.empty(size, dtype=g.live[0].dtype, device=self.device)
            views, at = [], 0
            for t in g.live:
                views.append(self._flat[at:at + t.numel()].view(t.shape))
                at += t.numel()
            self._scratch_views[block] = views
        return self._scratch_views[block]

    @torch.no_grad()
    def nonfinite_blocks(self) -> list[str]:
        """Blocks whose live weights hold inf/NaN after the last apply (e.g. an fp16 overflow)."""
        bad = []
        for block, g in self.groups.items():
            norms = torch._foreach_norm(g.live)
            if not bool(torch.isfinite(torch.stack(norms)).all()):
                bad.append(block)
        return bad


class _KeyView:
    """The Mixer's mergeable single-file keys and shapes, as merge_core.lora reads a checkpoint."""

    def __init__(self, family: Any, shapes: dict[str, tuple[int, ...]]):
        self.family, self._shapes = family, shapes

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]
