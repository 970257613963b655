"""kohya-format LoRA files: reading, validating, writing, and the delta one module adds.

A module ``NAME`` is stored as ``NAME.lora_down.weight`` [r, in] (or [r, in, kh, kw] for a
LoCon conv), ``NAME.lora_up.weight`` [out, r] (or [out, r, 1, 1]) and optionally
``NAME.alpha`` (a scalar; absent = r). Its weight delta is
``(alpha / r) * up @ down``, reshaped to the weight (kohya-ss sd-scripts networks/lora.py;
shared/notes/supermerger-spec.md section 7.2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import open_checkpoint
from ..errors import CheckpointError
from ..safetensors_file import save_safetensors

_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
# Other adapter formats, recognised by their key parts so the refusal can name them.
_UNSUPPORTED = (
    (re.compile(r"\.hada_"), "LoHa (LyCORIS)"),
    (re.compile(r"\.lokr_"), "LoKr (LyCORIS)"),
    (re.compile(r"\.lora_mid\."), "LoCon with Tucker decomposition (lora_mid)"),
    (re.compile(r"\.dora_scale$"), "DoRA"),
    (re.compile(r"\.diff(_b)?$"), "full-weight differences (diff)"),
    (re.compile(r"\.lora_[AB]\.|\.lora\.(down|up)\."), "PEFT/diffusers format"),
)


@dataclass(frozen=True)
class LoraModule:
    """One module's factors (as stored, any float dtype) and its alpha."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, shape: tuple[int, ...], factor: float = 1.0) -> torch.Tensor:
        """``factor * (alpha/r) * up @ down`` as an fp32 tensor of ``shape`` (the weight's, or its q/k/v rows)."""
        up = self.up.reshape(self.up.shape[0], -1).float()
        down = self.down.reshape(self.rank, -1).float()
        return (up @ down).mul_(factor * self.scale).reshape(shape)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """True when up @ down has the weight's size ([out, in*kh*kw])."""
        n_in = 1
        for s in shape[1:]:
            n_in *= s
        return (
            self.up.shape[0] == shape[0]
            and self.up.reshape(self.up.shape[0], -1).shape[1] == self.rank
            and self.down.reshape(self.rank, -1).shape[1] == n_in
        )


@dataclass(frozen=True)
class LoraFile:
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str]
    sha256: str


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a kohya LoRA/LoCon file (.safetensors, or .pt/.ckpt through weights-only loading).

    Raises CheckpointError naming the file and key for other formats (LoHa, LoKr, DoRA,
    Tucker, diffusers/PEFT), a down without an up, or ranks that disagree.
    """
    ckpt = open_checkpoint(path)
    keys = ckpt.keys()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key in keys:
        for marker, what in _UNSUPPORTED:
            if marker.search(key):
                raise CheckpointError(
                    f"{ckpt.path}: key {key!r} is {what}; only kohya LoRA and LoCon (lora_down/lora_up/alpha) "
                    "are supported — convert it to a kohya LoRA first"
                )
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith("lora_"):
            raise CheckpointError(
                f"{ckpt.path}: key {key!r} is not a kohya LoRA key (lora_*.lora_down.weight / lora_up.weight / "
                "alpha); is it a LoRA file? A full checkpoint goes to `merge` instead"
            )
        groups.setdefault(key[: -len(suffix)], {})[suffix] = ckpt.tensor(key)
    if not groups:
        raise CheckpointError(f"{ckpt.path}: holds no LoRA modules")
    modules: dict[str, LoraModule] = {}
    for name, parts in groups.items():
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if down is None or up is None:
            missing = "lora_up" if up is None else "lora_down"
            raise CheckpointError(f"{ckpt.path}: module {name!r} has no {missing}.weight; the file is incomplete")
        if up.reshape(up.shape[0], -1).shape[1] != down.shape[0]:
            raise CheckpointError(
                f"{ckpt.path}: module {name!r}: lora_up {tuple(up.shape)} does not match lora_down {tuple(down.shape)}"
            )
        alpha = parts.get(".alpha")
        a = float(alpha.float().reshape(-1)[0]) if alpha is not None and alpha.numel() else float(down.shape[0])
        modules[name] = LoraModule(down=down, up=up, alpha=a)
    return LoraFile(ckpt.path, modules, dict(ckpt.metadata), ckpt.sha256)


def write_lora(
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    out: str | os.PathLike,
    metadata: dict[str, str],
    *,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> Path:
    """Write ``{name: (down, up, alpha)}`` as a kohya LoRA, atomically (temporary name, then rename)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, (down, up, alpha) in modules.items():
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: already exists; choose another name or pass --overwrite")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: folder {out.parent} does not exist; create it first")
    return save_safetensors(tensors, out, metadata, overwrite=overwrite)
