"""Metadata written into merged files: our recipe, and the fields A1111's model list reads."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

from .checkpoint import Checkpoint
from .errors import CheckpointWarning
from .methods import get_method
from .prediction import carried_modelspec, merged_prediction
from .recipe import Recipe

RECIPE_KEY = "mergesearch_recipe"
SOURCES_KEY = "mergesearch_sources"
PENDING_HASH = "0" * 64  # stands in for a sha256 that is still being computed


def legacy_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-character model hash: sha256 of 64 KiB at offset 1 MiB (of the UNet's file in a
    diffusers folder)."""
    if os.path.isdir(path):
        from .diffusers_folder import component_file

        path = component_file(path, "unet")
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _uniform(values: list[tuple[float, ...]]) -> tuple[float, ...] | None:
    return values[0] if all(v == values[0] for v in values) else None


def _ancestry(ckpt: Checkpoint) -> dict[str, dict]:
    """A parent's own ``sd_merge_models`` (A1111 keeps the ancestry of merged parents).

    Other tools write it malformed (JSON ``null``, a list, broken text): then it is dropped
    with a warning, never allowed to stop the merge.
    """
    text = ckpt.metadata.get("sd_merge_models")
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    warnings.warn(
        f"{ckpt.path}: its sd_merge_models metadata is not a JSON object ({str(text)[:40]!r}); "
        "the merge does not carry it over",
        CheckpointWarning,
        stacklevel=3,
    )
    return {}


def merge_metadata(recipe: Recipe, sources: list[Checkpoint], hashes: list[str]) -> dict[str, str]:
    """The metadata of a merged file: ``hashes`` are the sources' sha256 (in recipe order)."""
    recipe = recipe.model_copy(
        update={
            "sources": tuple(
                s.model_copy(update={"sha256": h}) for s, h in zip(recipe.sources, hashes, strict=True)
            )
        }
    )
    unet = [recipe.weights[b] for b in recipe.weights if b not in ("TE", "VAE")]
    same = _uniform(unet)
    a1111 = {
        "type": "mergesearch",
        "primary_model_hash": hashes[0],
        "secondary_model_hash": hashes[1] if len(hashes) > 1 else None,
        "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None,
        "interp_method": recipe.method,
        "calcmode": get_method(recipe.method).spelling,
        "method_parameters": list(get_method(recipe.method).param_names(len(recipe.sources))),
        "seed": recipe.seed,
        "multiplier": same[0] if same and len(same) == 1 else None,
        "block_weights": None if same else {b: list(recipe.weights[b]) for b in recipe.weights},
        "save_as_half": recipe.dtype == "fp16",
        "dtype": recipe.dtype,
        "discard_weights": "" if recipe.keep_ema else "model_ema",
    }
    models: dict[str, dict] = {}
    for ckpt, src, sha in zip(sources, recipe.sources, hashes, strict=True):
        models[sha] = {
            "name": src.name,
            "legacy_hash": legacy_hash(ckpt.path),
            "sd_merge_recipe": ckpt.metadata.get("sd_merge_recipe"),
        }
        models.update(_ancestry(ckpt))
    return {
        **carried_modelspec(sources, merged_prediction(sources, warn=False)),
        "format": "pt",
        RECIPE_KEY: recipe.to_json(),
        SOURCES_KEY: json.dumps([{"name": s.name, "sha256": s.sha256} for s in recipe.sources]),
        "sd_merge_recipe": json.dumps(a1111),
        "sd_merge_models": json.dumps(models),
    }
