"""The run folder runs/<name>/: study.db, artifacts/, config.yaml and run.json (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import make_url


class RunError(ValueError):
    pass


class RunInfo(BaseModel):
    """run.json. `study_name` is the study commands read by default (the latest one a search ran);
    `studies` lists every study of the run (a `--fork` adds one beside the original), each reachable
    with `--study NAME`."""

    model_config = ConfigDict(frozen=True)

    study_name: str
    storage: str
    artifact_dir: str
    config_path: str
    studies: tuple[str, ...] = ()

    def all_studies(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.studies, self.study_name)))


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def absolute_storage(url: str) -> str:
    """SQLite URLs made absolute, so `status` works from any folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return f"sqlite:///{Path(parsed.database).resolve().as_posix()}"
    return url


def write_run(run_dir: Path, *, study_name: str, storage: str, config_text: str) -> RunInfo:
    run_dir = Path(run_dir)
    (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    atomic_write(config_path, config_text)
    studies: tuple[str, ...] = ()
    if (run_dir / "run.json").is_file():  # a fork (or another config) keeps the studies already here
        try:
            studies = RunInfo.model_validate_json((run_dir / "run.json").read_text()).all_studies()
        except ValueError:
            studies = ()
    info = RunInfo(study_name=study_name, storage=absolute_storage(storage),
                   artifact_dir=str((run_dir / "artifacts").resolve()), config_path=str(config_path.resolve()),
                   studies=tuple(dict.fromkeys((*studies, study_name))))
    atomic_write(run_dir / "run.json", json.dumps(info.model_dump(), indent=2) + "\n")
    return info


def read_run(arg: str | Path, study: str | None = None) -> RunInfo:
    """Accept the run folder or its run.json. A moved folder still finds its own study.db/artifacts.
    `study`: one of the run's studies (`--study NAME`) instead of the latest."""
    path = Path(arg)
    run_json = path / "run.json" if path.is_dir() else path
    if not run_json.is_file():
        raise RunError(f"{arg}: not a run folder (no run.json); give runs/<name> as `mergesearch search` made it")
    try:
        info = RunInfo.model_validate_json(run_json.read_text())
    except ValueError as exc:
        raise RunError(f"{run_json}: unreadable run.json ({str(exc).splitlines()[0]})") from None
    folder = run_json.parent
    fixes = {}
    db = folder / "study.db"
    parsed = make_url(info.storage)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists() and db.exists():
        fixes["storage"] = f"sqlite:///{db.resolve().as_posix()}"
    if not Path(info.artifact_dir).is_dir() and (folder / "artifacts").is_dir():
        fixes["artifact_dir"] = str((folder / "artifacts").resolve())
    if not Path(info.config_path).is_file() and (folder / "config.yaml").is_file():
        fixes["config_path"] = str((folder / "config.yaml").resolve())
    if study is not None and study != info.study_name:
        if study not in info.all_studies():
            raise RunError(f"{run_json}: no study {study!r} in this run; its studies are "
                           f"{', '.join(info.all_studies())} (give one with --study)")
        fixes["study_name"] = study
    return info.model_copy(update=fixes) if fixes else info
