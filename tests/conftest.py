import pytest
import torch

# The models and tensors in the tests are tiny: one intra-op thread is faster than two, and much
# faster on a busy machine, where threads wait on each other at every op.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Undo a test's thread change (benchmark mains set --threads) for the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
