import uuid

import optuna
import pytest
import torch
from search_helpers import tiny_sd1

from search.storage import StorageError, check_storage

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # the real server the postgres tests use


def postgres_up() -> bool:
    try:
        check_storage(POSTGRES, timeout=2)
        return True
    except StorageError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    """Each storage test runs against SQLite (WAL) and the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    if not postgres_up():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    yield POSTGRES


@pytest.fixture
def study_name(storage_url):
    """A fresh study name; its studies (and forks) are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    for s in optuna.get_all_study_summaries(storage_url, include_best_trial=False):
        if s.study_name.startswith(name):
            optuna.delete_study(study_name=s.study_name, storage=storage_url)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Three tiny SD1-layout checkpoints: base, a, b."""
    root = tmp_path_factory.mktemp("models")
    return {name: tiny_sd1(root / f"{name}.safetensors", seed=i) for i, name in enumerate(("base", "a", "b"))}
