"""Open a run folder (runs/<name>/run.json) and the study and artifact store it names."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import make_url

from search.rundir import RunError, read_run
from search.storage import StorageError, make_storage, sqlite_path


class ReviewError(ValueError):
    """A user error in review/export input; the message names the file, the key and the fix."""


class RunFolder(BaseModel):
    """What run.json says about a run (paths already followed if the folder moved)."""

    model_config = ConfigDict(frozen=True)

    root: Path
    study_name: str
    storage: str
    artifact_dir: Path
    config_path: Path | None = None

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def open_storage(self) -> optuna.storages.RDBStorage:
        if make_url(self.storage).get_backend_name() == "sqlite":
            db = sqlite_path(self.storage)
            if not db.is_file():
                # Opening would create an empty database; say what is missing instead.
                raise ReviewError(
                    f"{self.run_json}: storage {db} does not exist, so this run has no study yet; "
                    "run `mergesearch search` for it first or fix the 'storage' key"
                )
        try:
            return make_storage(self.storage)
        except StorageError as exc:
            raise ReviewError(f"{self.run_json}: {exc}") from None

    def open_study(self) -> optuna.Study:
        """Load the study; a missing study is a ReviewError naming run.json."""
        storage = self.open_storage()
        names = [s.study_name for s in storage.get_all_studies()]
        if self.study_name not in names:
            found = ", ".join(names) or "none"
            raise ReviewError(
                f"{self.run_json}: study {self.study_name!r} not found in {self.storage} "
                f"(studies there: {found}); run `mergesearch search` for this run first "
                "or fix the 'study_name' key"
            )
        return optuna.load_study(study_name=self.study_name, storage=storage)

    def artifact_store(self) -> FileSystemArtifactStore:
        if not self.artifact_dir.is_dir():
            raise ReviewError(
                f"{self.run_json}: artifact_dir {self.artifact_dir} does not exist; fix the 'artifact_dir' key"
            )
        return FileSystemArtifactStore(str(self.artifact_dir))


def load_run(path: str | Path, study: str | None = None) -> RunFolder:
    """Read runs/<name>/run.json (the folder or the file itself), as `mergesearch search` wrote it;
    `study` picks one of the run's studies (after a --fork) instead of the latest."""
    path = Path(path)
    try:
        info = read_run(path, study)
    except RunError as exc:
        raise ReviewError(str(exc)) from None
    root = path if path.is_dir() else path.parent
    return RunFolder(
        root=root,
        study_name=info.study_name,
        storage=info.storage,
        artifact_dir=Path(info.artifact_dir),
        config_path=Path(info.config_path) if info.config_path else None,
    )
