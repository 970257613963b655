import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # One thread: on a shared two-core machine a second torch thread makes tiny models ~10x slower.
    torch.set_num_threads(1)
    yield
