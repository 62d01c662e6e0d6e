"""benchmarks/gpu_check.sh --cpu-smoke: every step of the GPU script, on CPU, tiny settings."""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_at_most_8_files(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    run = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], env=env, capture_output=True,
                         text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert run.returncode == 0, log[-3000:]
    for name in ("gpu_tests", "bench_kernels", "gamma_grid", "bench_e2e"):
        assert f"PASS {name}" in log
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(["gpu_check.log", "kernels.csv", "kernels.json", "gamma_grid.png",
                            "gamma_grid.csv", "gamma_grid.json", "e2e.csv", "e2e.json"])


def test_rejects_unknown_arguments():
    run = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr
