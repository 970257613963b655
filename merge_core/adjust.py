"""Adjust: detail, contrast, brightness and colour nudged through the UNet's first and last layers (pure).

Eight values ``IN, OUT, OUT2, CONT, BRI, COL1, COL2, COL3`` (f0..f7), SuperMerger's "Adjust"
(behaviour from its documentation, see notes/supermerger-spec.md §5), applied to the merged
tensors of these keys (same names for SD1, SD2 and SDXL):

=======================================  ===============================  =========================
key (under ``model.diffusion_model.``)    what it is                       operation
=======================================  ===============================  =========================
``input_blocks.0.0.weight``               conv_in weight                   ``x (1 - 0.01 f0)``
``input_blocks.0.0.bias``                 conv_in bias                     ``x (1 + 0.02 f0)``
``out.0.weight``                          final GroupNorm scale            ``x (1 - 0.01 f1)``
``out.0.bias``                            final GroupNorm shift            ``x (1 + 0.02 f1)``
``out.2.weight``                          final conv weight                ``x (1 - 0.01 f2)``
``out.2.bias`` (one per latent channel)   final conv bias                  ``+ [0.02 f3, c1, c2, c3]``
=======================================  ===============================  =========================

Colour offsets ``[c1, c2, c3] = 0.02 * sum_i f(4+i) * COLS[i]`` with, for SD1/SD2,
``COLS = [[-1, 1/3, 2/3], [1, 1, 0], [0, -1, -1], [1, 0, 1]]`` (brightness, cyan-red,
magenta-green, yellow-blue) and for SDXL ``[[0, 0, 1], [1, 0, 0], [-1, -1, 0], [-1, 1, 0]]``.
Positive IN/OUT/OUT2 add detail (and noise); values around +-5 are reasonable.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, field_validator

NAMES = ("IN", "OUT", "OUT2", "CONT", "BRI", "COL1", "COL2", "COL3")
_U = "model.diffusion_model."
KEYS = tuple(_U + k for k in ("input_blocks.0.0.weight", "input_blocks.0.0.bias", "out.0.weight", "out.0.bias",
                              "out.2.weight", "out.2.bias"))
_COLS = {
    "sd1": ((-1.0, 1 / 3, 2 / 3), (1.0, 1.0, 0.0), (0.0, -1.0, -1.0), (1.0, 0.0, 1.0)),
    "sdxl": ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (-1.0, -1.0, 0.0), (-1.0, 1.0, 0.0)),
}
_COLS["sd2"] = _COLS["sd1"]


class AdjustError(ValueError):
    """A malformed Adjust string (wrong count, not numbers)."""


class Adjust(BaseModel):
    """The eight Adjust values, in the order of :data:`NAMES`. All zeros = off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: tuple[float, float, float, float, float, float, float, float]

    @field_validator("values", mode="before")
    @classmethod
    def _eight(cls, v):
        v = tuple(v)
        if len(v) != 8:
            raise AdjustError(f"Adjust takes 8 values ({', '.join(NAMES)}), got {len(v)}")
        return v

    @property
    def off(self) -> bool:
        return not any(self.values)

    def ops(self, family: str) -> dict[str, tuple[float, tuple[float, ...]]]:
        """{key: (scale, offset)}: the key's merged tensor becomes ``scale * x + offset``
        (``offset`` = () for none, else one value per element of a 1-D tensor)."""
        f = self.values
        cols = _COLS[str(family)]
        colour = [0.02 * sum(f[4 + i] * cols[i][c] for i in range(4)) for c in range(3)]
        w_in, b_in, w_norm, b_norm, w_out, b_out = KEYS
        return {
            w_in: (1 - 0.01 * f[0], ()),
            b_in: (1 + 0.02 * f[0], ()),
            w_norm: (1 - 0.01 * f[1], ()),
            b_norm: (1 + 0.02 * f[1], ()),
            w_out: (1 - 0.01 * f[2], ()),
            b_out: (1.0, (0.02 * f[3], *colour)),
        }


def parse_adjust(text: str) -> Adjust:
    """``"0,0,0,0,2,0,0,0"`` (commas or spaces) -> Adjust. AdjustError for a count other than 8."""
    parts = text.replace(",", " ").split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise AdjustError(f"Adjust {text!r}: write 8 numbers ({', '.join(NAMES)}), e.g. 0,0,0,0,2,0,0,0") from None
    if len(values) != 8:
        raise AdjustError(
            f"Adjust {text!r} has {len(values)} value(s); it takes 8 ({', '.join(NAMES)}), e.g. 0,0,0,0,2,0,0,0"
        )
    return Adjust(values=tuple(values))


def apply_op(tensor: torch.Tensor, op: tuple[float, tuple[float, ...]]) -> torch.Tensor:
    """``scale * tensor + offset`` in place on an fp32 tensor (returns it). ValueError when the offset's
    length does not fit (e.g. a model whose final conv has other than 4 latent channels)."""
    scale, offset = op
    if scale != 1.0:
        tensor.mul_(scale)
    if offset:
        if tensor.dim() != 1 or tensor.numel() != len(offset):
            raise ValueError(f"Adjust adds {len(offset)} latent-channel offsets but the final conv bias has shape "
                             f"{tuple(tensor.shape)}; Adjust supports 4-channel latents (SD1, SD2, SDXL)")
        tensor.add_(torch.tensor(offset, dtype=tensor.dtype, device=tensor.device))
    return tensor
