"""What an exported checkpoint records about where it came from (pure: study facts in, metadata out)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from optuna.trial import FrozenTrial

PROVENANCE_KEY = "mergesearch.provenance"


def _json_attr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def benchmark_hash(config: dict[str, Any] | None) -> str | None:
    """Hash of everything that defines the score: the objective (prompts, tagger, render settings),
    the renderer and the family. Two runs with the same hash scored trials the same way."""
    if not config or "objective" not in config:
        return None
    part = {k: config.get(k) for k in ("objective", "renderer", "family")}
    blob = json.dumps(part, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance(study_name: str, study_attrs: dict[str, Any], trial: FrozenTrial, recipe_json: str) -> dict[str, Any]:
    """The full record: study, trial, scores on both splits, benchmark identity, sampler, recipe."""
    attrs = trial.user_attrs
    config = _json_attr(study_attrs.get("config"))
    return {
        "tool": "mergesearch",
        "study": study_name,
        "trial": trial.number,
        "scores": {
            "metric": "tag_recall",
            "search": trial.value,
            "search_categories": attrs.get("categories"),
            "holdout": attrs.get("holdout"),
            "holdout_categories": attrs.get("holdout_categories"),
            "baseline": attrs.get("baseline"),
        },
        "benchmark": {
            "benchmark_hash": benchmark_hash(config if isinstance(config, dict) else None),
            "prompt_set_hash": study_attrs.get("prompt_set_hash"),
            "config_hash": study_attrs.get("config_hash"),
            "tagger": study_attrs.get("tagger"),
        },
        "sampler": study_attrs.get("sampler"),
        "family": study_attrs.get("family"),
        "sources": study_attrs.get("sources"),
        "recipe": json.loads(recipe_json),
    }


def provenance_metadata(record: dict[str, Any]) -> dict[str, str]:
    """Safetensors metadata (string values): the whole record as JSON plus a few flat, greppable keys."""
    scores = record["scores"]
    flat = {
        PROVENANCE_KEY: json.dumps(record, sort_keys=True, separators=(",", ":")),
        "mergesearch.study": str(record["study"]),
        "mergesearch.trial": str(record["trial"]),
        "mergesearch.tag_recall": f"{scores['search']:.6f}",
        "mergesearch.prompt_set_hash": str(record["benchmark"]["prompt_set_hash"]),
        "mergesearch.tagger": str(record["benchmark"]["tagger"]),
        "mergesearch.sampler": str(record["sampler"]),
    }
    if scores.get("holdout") is not None:
        flat["mergesearch.holdout_tag_recall"] = f"{scores['holdout']:.6f}"
    if record["benchmark"].get("benchmark_hash"):
        flat["mergesearch.benchmark_hash"] = record["benchmark"]["benchmark_hash"]
    # modelspec keys are what A1111/Forge/ComfyUI model browsers show as title and description
    flat["modelspec.title"] = f"{record['study']} trial {record['trial']}"
    flat["modelspec.description"] = (
        f"mergesearch merge: tag_recall {scores['search']:.4f} on the search split"
        + (f", {scores['holdout']:.4f} held out" if scores.get("holdout") is not None else "")
    )
    return flat
