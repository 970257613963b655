"""Export a trial: replay its recipe from the source files into a .safetensors with provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from pydantic import BaseModel, ConfigDict

from search.review.provenance import provenance, provenance_metadata
from search.review.run import ReviewError, RunFolder
from search.review.trials import pick_trial, trial_recipe

DTYPES = ("fp16", "bf16", "fp32")


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    study_name: str
    trial: int
    score: float
    dtype: str
    repaired_with: Path | None = None


def check_sources(recipe, relocate: dict[str, Path] | None = None):
    """The recipe with sources relocated as asked, after checking every file is there and unchanged.

    A source whose sha256 differs from the one recorded at search time would silently give a
    different model than the one that was scored, so it is refused.
    """
    from merge_core import file_sha256

    relocate = dict(relocate or {})
    names = [s.name for s in recipe.sources]
    unknown = sorted(set(relocate) - set(names))
    if unknown:
        raise ReviewError(f"--source {unknown[0]}=...: no source of that name; the recipe's sources are {names}")
    sources = []
    for source in recipe.sources:
        path = Path(relocate.get(source.name, source.path))
        if not path.is_file():
            raise ReviewError(
                f"source {source.name!r}: {path} not found (moved or deleted); put it back or pass "
                f"--source {source.name}=NEW_PATH"
            )
        digest = file_sha256(path)
        if digest != source.sha256:
            raise ReviewError(
                f"source {source.name!r}: {path} has sha256 {digest[:12]}…, but the search scored "
                f"{source.sha256[:12]}…; the file was modified or replaced. Restore the original "
                f"(or point --source {source.name}=PATH at it); exporting would not reproduce the trial"
            )
        sources.append(source.model_copy(update={"path": str(path)}) if str(path) != str(source.path) else source)
    return recipe.model_copy(update={"sources": tuple(sources)})


def _check_output(out: Path, overwrite: bool) -> None:
    if out.suffix != ".safetensors":
        raise ReviewError(f"-o {out}: the export is written as safetensors; name it *.safetensors")
    if out.exists() and not overwrite:
        raise ReviewError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
    if not out.parent.is_dir():
        raise ReviewError(f"-o {out}: folder {out.parent} does not exist; create it first")


def export_trial(
    run: RunFolder,
    out: str | Path,
    *,
    trial: str | int = "best",
    dtype: str | None = None,
    repair_with: str | Path | None = None,
    rank: int = 4,
    relocate: dict[str, Path] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Replay a completed trial's recipe through merge_core's streaming writer, atomically."""
    from merge_core import merge_to_file, repair_to_file

    out = Path(out)
    study = run.open_study()
    chosen = pick_trial(study, trial)
    _check_output(out, overwrite)
    recipe = check_sources(trial_recipe(chosen), relocate)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ReviewError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        recipe = recipe.model_copy(update={"dtype": dtype})
    metadata = provenance_metadata(provenance(study.study_name, study.user_attrs, chosen, recipe.model_dump_json()))
    if repair_with is None:
        merge_to_file(recipe, out, overwrite=overwrite, progress=progress, extra_metadata=metadata)
        return _result(out, study, chosen, recipe.dtype)

    repair_with = Path(repair_with)
    if not repair_with.is_file():
        raise ReviewError(f"--repair-with {repair_with}: no such file")
    # The merged model is A of the contact merge; it goes to a temporary name beside the output.
    merged = out.with_name(f".{out.stem}.merged.tmp.safetensors")
    try:
        merge_to_file(recipe.model_copy(update={"dtype": "fp32"}), merged, overwrite=True, progress=progress,
                      extra_metadata=metadata)
        record = json.loads(metadata["mergesearch.provenance"])
        record["repair"] = {"with": str(repair_with), "rank": rank}
        repair_meta = {**metadata, "mergesearch.provenance": json.dumps(record, sort_keys=True, separators=(",", ":")),
                       "mergesearch.repair": json.dumps(record["repair"])}
        repair_to_file(merged, repair_with, out, rank=rank, dtype=recipe.dtype, overwrite=overwrite,
                       progress=progress, extra_metadata=repair_meta)
    finally:
        if merged.exists():
            os.unlink(merged)
    return _result(out, study, chosen, recipe.dtype, repair_with)


def _result(out: Path, study: optuna.Study, trial: FrozenTrial, dtype: str, repaired: Path | None = None):
    return ExportResult(path=out, study_name=study.study_name, trial=trial.number, score=float(trial.value),
                        dtype=dtype, repaired_with=repaired)
