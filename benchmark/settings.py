"""How images are rendered: one frozen value, stored next to every score."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmark.errors import BenchmarkError
from benchmark.schedulers import SCHEDULERS


class RenderSettings(BaseModel):
    """Sampler settings. `width`/`height` None = the family's native size.

    `clip_skip` follows A1111: 1 = last text-encoder layer, 2 = penultimate (anime models).
    `prediction_type` overrides the config folder's (e.g. "epsilon" for SD 2.x base 512 models).
    """

    model_config = ConfigDict(frozen=True)

    scheduler: str = "euler-a"
    steps: int = Field(default=20, ge=1, le=1000)
    cfg: float = Field(default=7.0, ge=0.0)
    width: int | None = Field(default=None, ge=8)
    height: int | None = Field(default=None, ge=8)
    clip_skip: int = Field(default=1, ge=1, le=12)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise BenchmarkError(f"unknown scheduler {v!r}; choose one of {sorted(SCHEDULERS)}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise BenchmarkError(f"image size {v} is not a multiple of 8 (the VAE works on 8x8 patches)")
        return v
