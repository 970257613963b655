"""Open a run folder (runs/<name>/run.json) and the study and artifact store it names."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from pydantic import BaseModel, ConfigDict, ValidationError


class ReviewError(ValueError):
    """A user error in review/export input; the message names the file, the key and the fix."""


class RunFolder(BaseModel):
    """What run.json says about a run, with paths resolved against the run folder."""

    model_config = ConfigDict(frozen=True)

    root: Path
    study_name: str
    storage: str
    artifact_dir: Path
    config_path: Path | None = None

    def open_storage(self) -> optuna.storages.BaseStorage:
        kwargs = {"pool_pre_ping": True} if self.storage.startswith("postgresql") else {}
        return optuna.storages.RDBStorage(self.storage, engine_kwargs=kwargs)

    def open_study(self) -> optuna.Study:
        """Load the study; a missing study is a ReviewError naming run.json."""
        prefix = "sqlite:///"
        if self.storage.startswith(prefix) and not Path(self.storage[len(prefix):]).is_file():
            # Opening would silently create an empty database; say what is missing instead.
            raise ReviewError(
                f"{self.root / 'run.json'}: storage {self.storage} does not exist, so this run has no "
                "study yet; run `mergesearch search` for it first or fix the 'storage' key"
            )
        try:
            storage = self.open_storage()
            names = [s.study_name for s in storage.get_all_studies()]
        except Exception as exc:  # SQLAlchemy/driver errors vary by backend
            raise ReviewError(
                f"{self.root / 'run.json'}: cannot open storage {self.storage!r} ({exc}); "
                "check the 'storage' key or start the database"
            ) from exc
        if self.study_name not in names:
            found = ", ".join(names) or "none"
            raise ReviewError(
                f"{self.root / 'run.json'}: study {self.study_name!r} not found in {self.storage} "
                f"(studies there: {found}); run `mergesearch search` for this run first "
                "or fix the 'study_name' key"
            )
        return optuna.load_study(study_name=self.study_name, storage=storage)

    def artifact_store(self) -> FileSystemArtifactStore:
        if not self.artifact_dir.is_dir():
            raise ReviewError(
                f"{self.root / 'run.json'}: artifact_dir {self.artifact_dir} does not exist; "
                "fix the 'artifact_dir' key"
            )
        return FileSystemArtifactStore(str(self.artifact_dir))


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    # run.json is written by `mergesearch search`; relative paths may be relative to the
    # run folder or to the directory the search was started from.
    inside = root / path
    return inside if inside.exists() or not path.exists() else path.resolve()


def _resolve_storage(root: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(_resolve(root, url[len(prefix):]))
    return url


def load_run(path: str | Path) -> RunFolder:
    """Read runs/<name>/run.json (the folder or the file itself)."""
    path = Path(path)
    run_json = path / "run.json" if path.is_dir() else path
    if not run_json.is_file():
        raise ReviewError(
            f"{run_json}: no run.json here; pass a run folder made by `mergesearch search` "
            "(runs/<name>/) or its run.json"
        )
    root = run_json.parent
    try:
        data = json.loads(run_json.read_text())
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{run_json}: not valid JSON ({exc}); rewrite or restore the file") from exc
    for key in ("study_name", "storage", "artifact_dir"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ReviewError(f"{run_json}: key {key!r} missing or empty; add it (see docs/ARCHITECTURE.md)")
    try:
        return RunFolder(
            root=root,
            study_name=data["study_name"],
            storage=_resolve_storage(root, data["storage"]),
            artifact_dir=_resolve(root, data["artifact_dir"]),
            config_path=_resolve(root, data["config_path"]) if data.get("config_path") else None,
        )
    except ValidationError as exc:
        raise ReviewError(f"{run_json}: {exc}") from exc
