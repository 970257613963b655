"""What crosses the process boundary: a task out (the recipe, a few hundred floats), a result back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalTask(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: int
    trial_number: int
    split: Literal["search", "holdout", "confirm"] = "search"
    recipe: str  # Recipe JSON
    # per prompt batch: stop once the running score falls below this (None = never stop there)
    prune_below: tuple[float | None, ...] = ()


class EvalResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: int
    trial_number: int
    split: Literal["search", "holdout", "confirm"] = "search"
    status: Literal["ok", "pruned", "failed"]
    value: float | None = None  # overall tag recall (mean over the split's prompts)
    se: float | None = None  # its standard error over prompts (ddof=1)
    prompt_scores: tuple[float, ...] = ()  # recall per prompt, prompt-set order (paired comparisons)
    categories: dict[str, float] = Field(default_factory=dict)
    intermediate: tuple[float, ...] = ()  # running score after each prompt batch
    render_seconds: float = 0.0
    apply_seconds: float = 0.0
    saved_seconds: float = 0.0  # render time a pruned trial did not spend (estimated)
    sheet: bytes | None = None  # small WebP contact sheet
    error: str | None = None
    worker: str = ""
