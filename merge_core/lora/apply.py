"""Baking LoRAs into a checkpoint, streamed key by key like a merge.

W' = W + sum_l ratio_l * block_ratio_l(block of W) * (alpha_l / r_l) * up_l @ down_l, in fp32,
cast to the output dtype. Every LoRA is read and checked against the model (family, module
names, shapes) before the output is opened; the output is written under a temporary name
and renamed only when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import CheckpointError
from ..family import Family
from ..hashing import file_sha256
from ..maths import all_finite
from ..merge import OUT_DTYPES, one_torch_thread
from ..safetensors_file import StreamingWriter, atomic_output, tensor_bytes
from .blocks import block_ratios
from .file import LoraFile, LoraModule, read_lora
from .names import LoraTarget, lora_family_hint, lora_targets


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to bake: its file, a ratio (may be negative) and optional LBW block ratios."""

    path: str
    ratio: float = 1.0
    blocks: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``FILE[:RATIO[:BLOCKS]]`` (BLOCKS = a preset name or a comma list)."""
        parts = text.split(":", 2)
        if len(parts) == 1:
            return cls(parts[0])
        try:
            ratio = float(parts[1]) if parts[1] != "" else 1.0
        except ValueError:
            raise ValueError(f"{text!r}: the ratio after ':' must be a number (FILE[:RATIO[:BLOCKS]])") from None
        return cls(parts[0], ratio, parts[2] if len(parts) == 3 else None)


@dataclass
class Delta:
    """One module's contribution to one weight: factor includes ratio, block ratio and alpha/r."""

    module: LoraModule
    factor: float
    rows: tuple[int, int] | None
    shape: tuple[int, ...]


@dataclass
class LoraPlan:
    """Which weights change, and by which modules; ``per_block`` counts modules per weight id."""

    deltas: dict[str, list[Delta]] = field(default_factory=dict)
    per_block: dict[str, int] = field(default_factory=dict)
    loras: list[LoraFile] = field(default_factory=list)


def check_lora_family(lora: LoraFile, family: Family, targets: dict[str, LoraTarget]) -> None:
    """Refuse a LoRA made for another family or holding names the model lacks (CheckpointError)."""
    hint = lora_family_hint(lora.modules)
    if hint is not None and hint != family:
        raise CheckpointError(
            f"{lora.path}: is a LoRA for {hint.value.upper()} (its keys name two text encoders) but the model is "
            f"{family.value.upper()}; use a LoRA made for this family"
        )
    if family == Family.SDXL and any(n.startswith("lora_te_") for n in lora.modules):
        raise CheckpointError(
            f"{lora.path}: is a LoRA for SD1/SD2 (one text encoder, lora_te_*) but the model is SDXL; "
            "use a LoRA made for this family"
        )
    unknown = [n for n in lora.modules if n not in targets]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CheckpointError(
            f"{lora.path}: {len(unknown)} of {len(lora.modules)} LoRA modules match no weight of this "
            f"{family.value.upper()} model: {shown}; is the LoRA for another model type?"
        )
    for name, module in lora.modules.items():
        t = targets[name]
        if not module.fits(t.shape):
            raise CheckpointError(
                f"{lora.path}: module {name!r} has up {tuple(module.up.shape)} / down {tuple(module.down.shape)} "
                f"but the model's {t.key!r} is {t.shape}; the LoRA was made for another family or model size"
            )


def plan_loras(ckpt: Checkpoint, specs: list[LoraSpec], loras: list[LoraFile] | None = None) -> LoraPlan:
    """Read and check every LoRA against ``ckpt``; nothing is written."""
    family = ckpt.family
    targets = lora_targets(ckpt)
    plan = LoraPlan()
    for i, spec in enumerate(specs):
        lora = loras[i] if loras is not None else read_lora(spec.path)
        check_lora_family(lora, family, targets)
        ratios = block_ratios(family, spec.blocks, spec.ratio)
        for name, module in lora.modules.items():
            t = targets[name]
            factor = ratios[t.block]
            plan.per_block[t.block] = plan.per_block.get(t.block, 0) + 1
            if factor == 0.0:
                continue
            plan.deltas.setdefault(t.key, []).append(Delta(module, factor, t.rows, t.shape))
        plan.loras.append(lora)
    return plan


def apply_deltas(weight: torch.Tensor, deltas: list[Delta]) -> torch.Tensor:
    """``weight`` (any float dtype) plus its deltas, as a new fp32 tensor."""
    w = weight.float().clone()
    for d in deltas:
        if d.rows is None:
            w.add_(d.module.delta(d.shape, d.factor))
        else:
            w[d.rows[0] : d.rows[1]].add_(d.module.delta(d.shape, d.factor))
    return w


def apply_loras_to_file(
    model: str | os.PathLike,
    specs: list[LoraSpec],
    out: str | os.PathLike,
    *,
    dtype: str = "fp16",
    overwrite: bool = False,
    progress: bool = True,
) -> LoraPlan:
    """Write ``model`` with ``specs`` baked in to the safetensors file ``out`` (EMA copies dropped)."""
    if not specs:
        raise ValueError("give at least one LORA[:RATIO[:BLOCKS]]")
    out = Path(out)
    ckpt = open_checkpoint(model)
    if out.exists() and out.resolve() == ckpt.path.resolve():
        raise CheckpointError(f"{out}: is the model itself; write to a new file")
    plan = plan_loras(ckpt, specs)
    out_dtype = OUT_DTYPES[dtype]
    keys = ckpt.file_order(ckpt.keys())
    entries = {}
    for k in keys:
        stored = ckpt.dtype(k)
        entries[k] = (out_dtype if stored.is_floating_point and stored != out_dtype else stored, ckpt.shape(k))
    info = {
        "model": {"path": str(ckpt.path), "sha256": None},
        "loras": [
            {"path": str(lf.path), "sha256": lf.sha256, "ratio": s.ratio, "blocks": s.blocks}
            for lf, s in zip(plan.loras, specs, strict=True)
        ],
        "dtype": dtype,
    }
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp), one_torch_thread():
        meta = {"format": "pt", "mergesearch_loras": json.dumps(info)}
        with StreamingWriter(fd, out, entries, meta) as writer:
            for key in tqdm(keys, desc="applying LoRA", disable=not progress, leave=False):
                dt = entries[key][0]
                if key in plan.deltas:
                    w = apply_deltas(ckpt.tensor(key), plan.deltas[key])
                    if not all_finite(w.to(dt)):
                        raise CheckpointError(
                            f"{ckpt.path}: key {key!r} is not finite after adding the LoRAs; "
                            "lower the ratios or use --dtype fp32"
                        )
                    writer.put(key, tensor_bytes(w.to(dt)))
                elif dt == ckpt.dtype(key):
                    writer.put(key, ckpt.raw_bytes(key))
                else:
                    writer.put(key, tensor_bytes(ckpt.tensor(key).to(dt)))
            info["model"]["sha256"] = file_sha256(ckpt.path)
            writer.finish({"format": "pt", "mergesearch_loras": json.dumps(info)})
    return plan


def recipe_lora_deltas(loras, ckpt, *, cache: dict | None = None, targets: dict | None = None) -> dict[str, list[Delta]]:
    """Single-file key -> the deltas of a recipe's LoRAs (``Recipe.loras``) at their per-block strengths.

    ``ckpt``: anything with ``.family``, ``.keys()``, ``.shape()`` (the merge's first source, or the
    Mixer's key view). ``cache``: path -> LoraFile, so a worker reads each LoRA file once.
    Raises CheckpointError when a LoRA file changed since the recipe (sha256), or does not fit.
    """
    family = Family(ckpt.family)
    targets = targets if targets is not None else lora_targets(ckpt)
    out: dict[str, list[Delta]] = {}
    for use in loras:
        lora = cache.get(use.path) if cache is not None else None
        if lora is None:
            lora = read_lora(use.path)
            if use.sha256 and use.sha256 != lora.sha256:
                raise CheckpointError(
                    f"{lora.path}: sha256 {lora.sha256[:10]} differs from the recipe's {use.sha256[:10]}; the LoRA "
                    "changed since the recipe was made — point the recipe at the original file"
                )
            check_lora_family(lora, family, targets)
            if cache is not None:
                cache[use.path] = lora
        for name, module in lora.modules.items():
            t = targets[name]
            factor = float(use.strengths.get(t.block, 0.0))
            if factor != 0.0:
                out.setdefault(t.key, []).append(Delta(module, factor, t.rows, t.shape))
    return out
