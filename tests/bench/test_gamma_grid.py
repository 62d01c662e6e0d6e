"""benchmarks/gamma_grid.py on a tiny model and a coarse grid (real timing, tiny cost)."""
import csv
import json
import math

import gamma_grid
import pytest

from sgkernels import presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, SparseGuidance

TINY = ["--device", "cpu", "--model", "Tiny/2", "--batch", "2", "--repeats", "1", "--steps", "10"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    record = gamma_grid.main([*TINY, "--quick", "--out", str(out)])
    with open(out / "gamma_grid.csv") as f:
        rows = list(csv.DictReader(f))
    return out, record, rows


def test_writes_heatmap_csv_and_json(quick_run):
    out, _, _ = quick_run
    png = (out / "gamma_grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    record = json.loads((out / "gamma_grid.json").read_text())
    for key in ("machine", "model", "batch", "backend", "gammas", "dtype", "steps", "reference"):
        assert key in record
    assert record["model"] == "Tiny/2" and record["batch"] == 2 and record["backend"] == "auto"
    assert "extrapolated to a 10-step run" in record["timing"]
    assert record["machine"]["torch"]


def test_only_valid_cells_are_timed(quick_run):
    _, record, rows = quick_run
    gammas = [0.0, 0.25, 0.5, 0.75]
    assert record["gammas"] == gammas
    cells = {(float(r["gamma_strong"]), float(r["gamma_weak"])) for r in rows}
    assert cells == {(s, w) for s in gammas for w in gammas if s <= w}
    assert record["cells"] == record["cells_valid"] == 10


def test_flops_speedups_and_throughput_are_consistent(quick_run):
    _, record, rows = quick_run
    config = presets.get("Tiny/2")
    gflops_cfg = sampling_gflops(config, CFG(2.0), 10)
    for r in rows:
        g = SparseGuidance(2.0, float(r["gamma_strong"]), float(r["gamma_weak"]))
        assert float(r["gflops_per_image_step"]) == pytest.approx(sampling_gflops(config, g, 10),
                                                                  rel=1e-5)
        assert float(r["predicted_speedup"]) == pytest.approx(
            gflops_cfg / float(r["gflops_per_image_step"]), rel=1e-4)
        assert float(r["realized_fraction"]) == pytest.approx(
            float(r["speedup_vs_cfg"]) / float(r["predicted_speedup"]), rel=1e-4)
        # images/s = B / (steps · seconds per step)
        assert float(r["images_per_s"]) == pytest.approx(2 / (10 * float(r["ms_per_step"]) / 1e3),
                                                         rel=1e-4)
    ref = record["reference"]
    assert ref["cfg"]["speedup_vs_cfg"] == 1.0
    assert ref["unguided"]["predicted_speedup"] == pytest.approx(2.0)
    assert ref["sg_flops_0.5_0.9"]["gflops_per_image_step"] == pytest.approx(
        sampling_gflops(config, SparseGuidance(2.0, 0.5, 0.9), 10))


def test_grid_array_masks_invalid_cells():
    rows = [{"gamma_strong": 0.0, "gamma_weak": 0.5, "x": 3.0}]
    grid = gamma_grid.grid_array(rows, [0.0, 0.5], "x")
    assert grid[0][1] == 3.0 and all(math.isnan(v) for v in (grid[0][0], grid[1][0], grid[1][1]))


def test_separate_adds_the_packing_panel(tmp_path):
    gamma_grid.main([*TINY, "--step", "0.5", "--separate", "--out", str(tmp_path)])
    with open(tmp_path / "gamma_grid.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(float(r["packed_gain"]) > 0 for r in rows)
    assert json.loads((tmp_path / "gamma_grid.json").read_text())["packed"] is False


def test_budget_leaves_cells_out(tmp_path):
    record = gamma_grid.main([*TINY, "--step", "0.5", "--budget-s", "1e-9", "--out",
                              str(tmp_path)])
    assert record["cells"] == 0 and record["cells_valid"] == 3


def test_metric_needs_a_checkpoint_and_the_eval_package(capsys):
    with pytest.raises(SystemExit):
        gamma_grid.parse_args(["--metric", "fid"])
    assert "--metric needs --ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gamma_grid.parse_args(["--metric", "fid", "--ckpt", "model.pt"])
    assert "sgkernels.eval" in capsys.readouterr().err
