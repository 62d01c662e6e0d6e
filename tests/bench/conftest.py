"""The benchmark scripts live in benchmarks/ (not a package): make them importable here (the
thread count their main() may change is restored by tests/conftest.py)."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

if importlib.util.find_spec("pytest_benchmark") is None:
    @pytest.fixture
    def benchmark():
        """Stand-in when the pytest-benchmark plugin (a test extra) is not installed."""
        pytest.skip("pytest-benchmark is not installed")
