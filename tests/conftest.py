import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference over max absolute value: the parity measure of the test suite."""
    return ((ours - reference).abs().max() / reference.abs().max()).item()
