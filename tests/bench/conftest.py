"""The benchmark scripts live in benchmarks/ (not a package): make them importable here, and
undo the CPU-thread change their main() may make (--threads, or 1 thread on an oversubscribed
machine) so the tests that run after these see the suite's setting."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


if importlib.util.find_spec("pytest_benchmark") is None:
    @pytest.fixture
    def benchmark():
        """Stand-in when the pytest-benchmark plugin (a test extra) is not installed."""
        pytest.skip("pytest-benchmark is not installed")
