"""Sampler names users know (A1111 spelling in the help) -> diffusers scheduler classes.

Each is built `from_config` of the family's own scheduler config, so the training noise
schedule (betas, prediction type, timestep offset) carries over; only the sampler changes.
"""

from __future__ import annotations

from typing import Any

from benchmark.errors import BenchmarkError

# name -> (diffusers class name, extra config, A1111 name)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "dpmpp-2m-karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                        "DPM++ 2M Karras"),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "native": ("", {}, "the config folder's own scheduler"),
}


def make_scheduler(name: str, base_config: dict[str, Any], *, prediction_type: str | None = None):
    """A fresh scheduler `name` on top of `base_config` (the family's scheduler_config.json)."""
    import diffusers

    if name not in SCHEDULERS:
        raise BenchmarkError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls_name, extra, _ = SCHEDULERS[name]
    cls_name = cls_name or base_config["_class_name"]
    config = {k: v for k, v in base_config.items() if k != "_class_name"}
    config.update(extra)
    if prediction_type:
        config["prediction_type"] = prediction_type
    return getattr(diffusers, cls_name).from_config(config)
