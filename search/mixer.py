"""The Mixer: n sources resident on a worker, grouped by block, written into a live pipeline in place.

`apply(recipe)` sets every live parameter p of block b to sum_i c[i, b] * theta_i[p] with fused
foreach ops: no state-dict copies, no disk, no pipeline rebuild per trial.

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
                    for i, c in enumerate(converted):
                        t = c[module][name].to(device=src_device, dtype=src_dtype)
                        if pin:
                            t = t.pin_memory()
                        self.source_bytes += t.numel() * t.element_size()
                        g.sources[i].append(t)
        self.n_sources = len(converted)
        self.source_device = src_device
        self.last_apply_seconds = 0.0
        self._flat: torch.Tensor | None = None
        self._scratch_views: dict[str, list[torch.Tensor]] = {}

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
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.last_apply_seconds = time.perf_counter() - t0
        return self.last_apply_seconds

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
