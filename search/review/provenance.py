"""What an exported checkpoint records about where it came from (pure: study facts in, metadata out)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from search.trial_record import OBJECTIVE, RECALL, TrialRecord

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
    from search.config import RENDER_SPEED_FIELDS

    part = {k: config.get(k) for k in ("objective", "renderer", "family")}
    render = (part["objective"] or {}).get("render") if isinstance(part["objective"], dict) else None
    if isinstance(render, dict):  # speed settings (compile, overlap, batch) do not change the score
        part["objective"] = {**part["objective"],
                             "render": {k: v for k, v in render.items() if k not in RENDER_SPEED_FIELDS}}
    blob = json.dumps(part, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance(study_name: str, study_attrs: dict[str, Any], trial: TrialRecord, recipe_json: str,
               comparisons: list[str] | None = None) -> dict[str, Any]:
    """The full record: study, trial, scores on every split, benchmark identity, sampler, recipe.

    `scores.objective` is what the search maximised; `scores.search` the raw tag recall on the search
    split (equal without a negative-weight penalty); `holdout`/`confirm` raw tag recall on those.
    `comparisons`: how the trial was chosen and its paired intervals against the best parent and the
    merge baselines (`search.comparison.summary_lines`), when it is the study's reported best."""
    config = _json_attr(study_attrs.get("config"))
    return {
        "tool": "mergesearch",
        "study": study_name,
        "trial": trial.number,
        "scores": {
            "metric": RECALL,
            OBJECTIVE: trial.objective,
            "negative_mass": trial.negative_mass,
            "search": trial.search,
            "search_se": trial.search_se,
            "search_categories": trial.search_categories or None,
            "holdout": trial.holdout,
            "holdout_se": trial.holdout_se,
            "holdout_categories": trial.holdout_categories or None,
            "confirm": trial.confirm,
            "confirm_se": trial.confirm_se,
            "confirm_categories": trial.confirm_categories or None,
            "baseline": trial.baseline,
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
        "comparisons": comparisons or [],
    }


def provenance_metadata(record: dict[str, Any]) -> dict[str, str]:
    """Safetensors metadata (string values): the whole record as JSON plus a few flat, greppable keys."""
    scores = record["scores"]
    flat = {
        PROVENANCE_KEY: json.dumps(record, sort_keys=True, separators=(",", ":")),
        "mergesearch.study": str(record["study"]),
        "mergesearch.trial": str(record["trial"]),
        "mergesearch.prompt_set_hash": str(record["benchmark"]["prompt_set_hash"]),
        "mergesearch.tagger": str(record["benchmark"]["tagger"]),
        "mergesearch.sampler": str(record["sampler"]),
    }
    if scores.get("search") is not None:
        flat["mergesearch.tag_recall"] = f"{scores['search']:.6f}"  # raw recall, search split
    if scores.get(OBJECTIVE) is not None:
        flat["mergesearch.objective"] = f"{scores[OBJECTIVE]:.6f}"  # what the search maximised
    if scores.get("holdout") is not None:
        flat["mergesearch.holdout_tag_recall"] = f"{scores['holdout']:.6f}"
    if scores.get("confirm") is not None:
        flat["mergesearch.confirm_tag_recall"] = f"{scores['confirm']:.6f}"
    if record["benchmark"].get("benchmark_hash"):
        flat["mergesearch.benchmark_hash"] = record["benchmark"]["benchmark_hash"]
    # modelspec keys are what A1111/Forge/ComfyUI model browsers show as title and description
    if record.get("comparisons"):
        flat["mergesearch.comparisons"] = "; ".join(record["comparisons"])
    flat["modelspec.title"] = f"{record['study']} trial {record['trial']}"
    flat["modelspec.description"] = "mergesearch merge: " + describe_scores(scores)
    return flat


def describe_scores(scores: dict[str, Any]) -> str:
    """One line naming each quantity once: raw tag recall per split, the objective only when it differs."""
    parts = []
    if scores.get("search") is not None:
        parts.append(f"{RECALL} {scores['search']:.4f} on the search split")
    objective, search = scores.get(OBJECTIVE), scores.get("search")
    if objective is not None and (search is None or abs(objective - search) > 1e-12):
        parts.append(f"{OBJECTIVE} {objective:.4f} (after the negative-weight penalty)")
    if scores.get("holdout") is not None:
        parts.append(f"{scores['holdout']:.4f} held out")
    if scores.get("confirm") is not None:
        parts.append(f"{scores['confirm']:.4f} on the confirm split")
    return ", ".join(parts) or "no score stored"
