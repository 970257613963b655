"""merge_core tests: one torch thread, and a hash cache of their own (never the user's)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads_and_a_private_hash_cache(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("MERGESEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
