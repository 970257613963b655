"""Export a trial: replay its recipe from the source files into a .safetensors with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from pydantic import BaseModel, ConfigDict

from merge_core import file_sha256, merge_to_file, repair_to_file
from merge_core.outputs import check_output
from merge_core.safetensors_file import atomic_output, build_header, read_header, write_all
from search.review.provenance import PROVENANCE_KEY, provenance, provenance_metadata
from search.review.run import ReviewError, RunFolder
from search.review.trials import pick_trial, trial_recipe
from search.trial_record import TrialRecord

DTYPES = ("fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_e5m2")


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    study_name: str
    trial: int
    score: float | None  # raw tag recall on the search split
    dtype: str
    repaired_with: Path | None = None
    objective: float | None = None  # what the search maximised (differs from `score` under a penalty)


def check_sources(recipe, relocate: dict[str, Path] | None = None):
    """The recipe with sources relocated as asked, after checking every file is there and unchanged.

    A source whose sha256 differs from the one recorded at search time would silently give a
    different model than the one that was scored, so it is refused.
    """
    relocate = dict(relocate or {})
    names = [s.name for s in recipe.sources]
    unknown = sorted(set(relocate) - set(names))
    if unknown:
        raise ReviewError(f"--source {unknown[0]}=...: no source of that name; the recipe's sources are {names}")
    sources = []
    for source in recipe.sources:
        path = Path(relocate.get(source.name, source.path))
        if not (path.is_file() or (path / "model_index.json").is_file()):
            raise ReviewError(
                f"source {source.name!r}: {path} not found (moved or deleted); put it back or pass "
                f"--source {source.name}=NEW_PATH"
            )
        if not source.sha256:
            raise ReviewError(
                f"source {source.name!r}: the trial's recipe records no sha256, so it cannot be checked that "
                f"{path} is the file the search scored; export it with `mergesearch merge --recipe` instead"
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
    adjust: str | None = None,
    vae: str | Path | None = None,
) -> ExportResult:
    """Replay a completed trial's recipe through merge_core's streaming writer, atomically.

    ``adjust``: eight Adjust values (merge_core.adjust) applied on top of the trial's merge; the
    exported recipe (and provenance) records them. ReviewError for a malformed string.
    ``vae``: a VAE file or folder baked into the export (merge_core.vae); recorded in the metadata.
    """
    out = Path(out)
    study = run.open_study()
    chosen = pick_trial(study, trial)
    _check_output(out, overwrite)
    recipe = check_sources(trial_recipe(chosen), relocate)
    # Never over a search source or the repair donor, --overwrite or not (the next export would fail its sha256).
    check_output(out, [s.path for s in recipe.sources] + ([repair_with] if repair_with else []),
                 overwrite=overwrite, what="the export")
    if dtype is not None:
        if dtype not in DTYPES:
            raise ReviewError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        recipe = recipe.model_copy(update={"dtype": dtype})
    if adjust is not None:
        from merge_core.adjust import parse_adjust

        try:
            recipe = recipe.model_copy(update={"adjust": parse_adjust(adjust)})
        except ValueError as exc:
            raise ReviewError(f"--adjust: {exc}") from None
    from search import trial_record as record
    from search.comparison import summary_lines

    records = record.read_all(study)
    best = record.best(records)
    notes = summary_lines(records) if best is not None and best.number == chosen.number else []
    metadata = provenance_metadata(provenance(study.study_name, study.user_attrs, chosen, recipe.model_dump_json(),
                                              notes))
    if repair_with is None:
        merge_to_file(recipe, out, overwrite=overwrite, progress=progress, extra_metadata=metadata, vae=vae)
        return _result(out, study, chosen, recipe.dtype)

    repair_with = Path(repair_with)
    if not repair_with.is_file():
        raise ReviewError(f"--repair-with {repair_with}: no such file; give the checkpoint to repair toward")
    record = json.loads(metadata[PROVENANCE_KEY])
    record["repair"] = {"with": str(repair_with), "sha256": file_sha256(repair_with), "rank": rank}
    metadata = {**metadata, PROVENANCE_KEY: json.dumps(record, sort_keys=True, separators=(",", ":")),
                "mergesearch.repair": json.dumps(record["repair"], sort_keys=True)}
    # The merge is A of the contact merge A + rank-r(B - A): fp32 scratch files beside the output,
    # then the repaired tensors are restamped with the merge's metadata plus the repair.
    merged = out.with_name(f".{out.stem}.merged.tmp.safetensors")
    repaired = out.with_name(f".{out.stem}.repaired.tmp.safetensors")
    try:
        merge_to_file(recipe.model_copy(update={"dtype": "fp32"}), merged, overwrite=True, progress=progress,
                      vae=vae)
        repair_to_file(merged, repair_with, repaired, rank=rank, dtype=recipe.dtype, overwrite=True,
                       progress=progress)
        merge_meta = read_header(merged)[1]
        restamp(repaired, out, {**merge_meta, **read_header(repaired)[1], **metadata}, overwrite=overwrite)
    finally:
        merged.unlink(missing_ok=True)
        repaired.unlink(missing_ok=True)
    return _result(out, study, chosen, recipe.dtype, repair_with)


def restamp(src: Path, out: Path, metadata: dict[str, str], *, overwrite: bool = False) -> Path:
    """Copy a safetensors file with new metadata: the tensor bytes are copied verbatim, atomically."""
    infos, _ = read_header(src)
    ordered = sorted(infos.items(), key=lambda kv: kv[1].start)
    header, _ = build_header({k: (i.dtype, i.shape) for k, i in ordered}, metadata)
    data_start = ordered[0][1].start if ordered else 0
    with atomic_output(out, overwrite=overwrite) as (fd, _tmp), open(src, "rb") as f:
        write_all(fd, header)
        f.seek(data_start)
        while chunk := f.read(8 << 20):
            write_all(fd, chunk)
    return out


def _result(out: Path, study: optuna.Study, trial: TrialRecord, dtype: str, repaired: Path | None = None):
    return ExportResult(path=out, study_name=study.study_name, trial=trial.number, score=trial.search,
                        objective=trial.objective,
                        dtype=dtype, repaired_with=repaired)
