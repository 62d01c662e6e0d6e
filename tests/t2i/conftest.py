import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The models here are tiny: one intra-op thread avoids thread-sync stalls on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
