import pytest
import torch
from search_helpers import tiny_sd1


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Three tiny SD1-layout checkpoints: base, a, b."""
    root = tmp_path_factory.mktemp("models")
    return {name: tiny_sd1(root / f"{name}.safetensors", seed=i) for i, name in enumerate(("base", "a", "b"))}
