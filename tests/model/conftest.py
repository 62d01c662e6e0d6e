import pytest
import torch
from model_helpers import small_config


@pytest.fixture(autouse=True)
def single_thread():
    """The models here are tiny: one intra-op thread avoids thread-sync stalls on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["sit", "llama", "maskdit"])
def flavour_config(request):
    if request.param == "maskdit":
        return small_config("sit", maskdit=True)
    return small_config(request.param)
