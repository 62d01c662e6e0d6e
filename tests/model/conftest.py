import pytest
from model_helpers import small_config


@pytest.fixture(params=["sit", "llama", "maskdit"])
def flavour_config(request):
    if request.param == "maskdit":
        return small_config("sit", maskdit=True)
    return small_config(request.param)
