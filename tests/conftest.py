"""Shared test set-up: keep torch to the machine's two cores and make runs reproducible."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing on a test path may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# commands append to the merge history: never to the user's own (~/.cache/mergesearch/history.sqlite)
import tempfile  # noqa: E402

os.environ["MERGESEARCH_HISTORY"] = os.path.join(tempfile.mkdtemp(prefix="mergesearch-test-"), "history.sqlite")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole test session (2 CPUs, no GPU, no dashboard).

    Test folders' helper modules are put on the workers' PYTHONPATH so actors can import them."""
    ray = pytest.importorskip("ray")
    paths = [str(ROOT), *(str(p) for p in sorted((ROOT / "tests").iterdir()) if p.is_dir())]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
