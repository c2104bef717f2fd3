"""Every test starts from the same global RNG state, so unseeded draws are reproducible."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
