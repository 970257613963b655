import pytest
import torch
from sd_keysets import tiny_state_dict

from merge_core import save_safetensors


@pytest.fixture(autouse=True)
def _few_threads_and_a_private_hash_cache(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("MERGESEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_sd1(tmp_path):
    """Three tiny SD1 checkpoints (real key names, dims capped at 6): paths A, B, C."""
    paths = []
    for i, name in enumerate("ABC"):
        p = tmp_path / f"{name}.safetensors"
        save_safetensors(tiny_state_dict("sd1", seed=i), p)
        paths.append(p)
    return paths
