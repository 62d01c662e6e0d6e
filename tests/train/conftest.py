import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The training tests run tiny models: one intra-op thread is faster than two (much faster
    on a loaded machine, where two threads wait on each other at every op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
