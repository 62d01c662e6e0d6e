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


def test_metric_needs_a_checkpoint(capsys):
    with pytest.raises(SystemExit):
        gamma_grid.parse_args(["--metric", "cfd"])
    assert "--metric needs --ckpt" in capsys.readouterr().err


def test_quality_heatmap_from_a_checkpoint(tmp_path, monkeypatch):
    """--ckpt --metric: sampled images reach sgkernels.eval and land in quality.csv / .png.

    The classifier is an untrained FashionCNN (no training run in a test) and the reference a
    small random image set; the cache goes to tmp_path.
    """
    import numpy as np
    import torch

    import sgkernels.eval.classifier as classifier
    from sgkernels import RoutedDiT

    monkeypatch.setenv("SGKERNELS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    untrained = classifier.FashionCNN().eval()
    monkeypatch.setattr(classifier, "load_classifier",
                        lambda seed=0, log=None: (untrained, {"arch": "untrained"}))
    config = presets.get("Tiny/2")
    model = RoutedDiT(config)
    with torch.no_grad():  # leave adaLN-Zero init: a zero velocity would make every cell equal
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": {},
                "args": {"model_config": config.to_dict()}, "step": 0}, ckpt)
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 64))
    record = gamma_grid.main(["--device", "cpu", "--ckpt", str(ckpt), "--batch", "8",
                              "--repeats", "1", "--steps", "2", "--step", "0.5",
                              "--metric", "cfd", "--metric-step", "0.5", "--metric-num", "16",
                              "--ref", str(ref), "--out", str(tmp_path / "out")])
    quality = record["quality"]
    assert quality["metric"] == "cfd" and quality["images_per_cell"] == 16
    cells = {(c["gamma_strong"], c["gamma_weak"]): c["cfd"] for c in quality["cells"]}
    assert set(cells) == {(0.0, 0.0), (0.0, 0.5), (0.5, 0.5)}
    assert all(math.isfinite(v) and v >= 0 for v in [*cells.values(), quality["cfg"]])
    # (0, 0) is one dense conditional branch: the same images as unguided sampling
    assert cells[0.0, 0.0] == pytest.approx(quality["unguided"], rel=1e-6)
    assert cells[0.0, 0.5] != pytest.approx(cells[0.0, 0.0], rel=1e-6)
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000
    with open(tmp_path / "out" / "quality.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
