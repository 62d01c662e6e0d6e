"""benchmarks/gamma_grid.py on a tiny model and a coarse grid (real timing, tiny cost)."""
import csv
import json
import math
import re

import common
import gamma_grid
import pytest
import torch

from sgkernels import presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, SparseGuidance

CPU = torch.device("cpu")
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


def test_cells_carry_paired_intervals(quick_run):
    """Interval columns, and a cell's ms/step, img/s and speedup from the same rounds."""
    _, record, rows = quick_run
    for r in rows:
        v = {k: float(x) for k, x in r.items()}
        assert v["speedup_low"] <= v["speedup_vs_cfg"] <= v["speedup_high"]
        for end in ("low", "high"):
            assert v[f"realized_{end}"] == pytest.approx(
                v[f"speedup_{end}"] / v["predicted_speedup"], rel=1e-4)
        assert v["cfg_ms_per_step"] / v["ms_per_step"] == pytest.approx(v["speedup_vs_cfg"],
                                                                        rel=1e-4)
        # --repeats 1 --quick: one round, no interval at 95 %: every cell marked
        assert int(r["rounds"]) == 1 and v["ci_coverage"] == 0 and int(r["wide"]) == 1
    assert record["rounds_min"] == record["rounds_max"] == 1
    assert record["max_rel_width"] == 0.2 and record["interval_level"] == 0.95


def test_summary_is_consistent_with_its_figures(quick_run):
    """The headline's ratios are the ratios of the absolute figures printed next to them."""
    _, record, _ = quick_run
    ref = record["reference"]
    for key in ("unguided", "sg_flops_0.5_0.9"):
        assert ref[key]["images_per_s"] / ref["cfg"]["images_per_s"] == pytest.approx(
            ref[key]["speedup_vs_cfg"], rel=1e-9)
        assert ref[key]["rounds"] == ref["cfg"]["rounds"]
    line = gamma_grid.summary(ref)
    number = r"([0-9.e+-]+)"
    m = re.match(rf"CFG {number} img/s, unguided {number} img/s = {number}× CFG; "
                 rf"SG 0.5/0.9 {number} img/s = {number}× CFG \[{number}, {number}\]", line)
    assert m, line
    cfg, unguided, x_unguided, sg, x_sg, low, high = map(float, m.groups())
    for absolute, ratio in ((unguided, x_unguided), (sg, x_sg)):
        # 3 significant digits on both figures (≤ 0.5 % each), 2 decimals on the ratio
        assert absolute / cfg == pytest.approx(ratio, rel=0.011, abs=0.005)
    assert low <= x_sg <= high


def fake_rounds(cfg, cell, n):
    return [{"cfg": c, "cell": t} for c, t in zip(cfg[:n], cell[:n])]


def test_paired_values_mark_unreadable_cells():
    s = {"timed": 1, "batch": 2, "max_rel_width": 0.2}
    steady = fake_rounds([2.0, 2.1, 1.9, 2.0, 2.2, 2.0], [1.0, 1.05, 0.95, 1.0, 1.1, 1.0], 6)
    v = gamma_grid.paired_values(steady, "cell", s, 10, 1.0, 2.0)
    assert v["speedup_vs_cfg"] == pytest.approx(2.0) and v["rel_width"] == pytest.approx(0.0)
    assert v["wide"] == 0 and v["rounds"] == 6 and v["ci_coverage"] == pytest.approx(0.96875)
    assert v["cfg_ms_per_step"] == pytest.approx(2000.0) and v["ms_per_step"] == pytest.approx(
        1000.0)
    noisy = fake_rounds([2.0] * 6, [1.0, 1.3, 0.8, 1.0, 1.0, 1.0], 6)
    assert gamma_grid.paired_values(noisy, "cell", s, 10, 1.0, 2.0)["wide"] == 1
    five = fake_rounds([2.0] * 5, [1.0] * 5, 5)  # (min, max) of 5: 93.75 % < 95 %
    assert gamma_grid.paired_values(five, "cell", s, 10, 1.0, 2.0)["wide"] == 1


def test_time_block_adds_rounds_only_for_unreadable_cells(monkeypatch):
    """Steady cell: 6 rounds; noisy cell: more rounds up to --max-repeats, CFG in each."""
    calls = {"steady": 0, "noisy": 0}

    def fake_round(fns, device, rng):
        out = {"cfg": 2.0}
        for key in fns:
            if key != "cfg":
                calls[key] += 1
                out[key] = 1.0 if key == "steady" else (0.6, 1.4)[calls[key] % 2]
        return out

    monkeypatch.setattr(gamma_grid, "time_round", fake_round)
    s = {"repeats": 6, "max_repeats": 12, "max_rel_width": 0.2}
    fns = dict.fromkeys(("cfg", "steady", "noisy"), lambda: None)
    pairs = {"steady": [("cfg", "steady")], "noisy": [("cfg", "noisy")]}
    rounds = gamma_grid.time_block(fns, pairs, s, CPU, None, {}, lambda: True)
    assert calls == {"steady": 6, "noisy": 12} and len(rounds) == 12
    assert all("cfg" in r for r in rounds)
    calls.update(steady=0, noisy=0)
    gamma_grid.time_block(fns, pairs, s, CPU, None, {}, lambda: False)  # no slack: no extra
    assert calls == {"steady": 6, "noisy": 6}


def test_extra_rounds_follow_the_pace():
    clock = common.Clock()
    clock.start -= 50  # 50 s elapsed
    assert gamma_grid.extra_rounds_allowed(clock, None, 1, 10)
    assert gamma_grid.extra_rounds_allowed(clock, 100.0, 6, 10)      # 50 s < 60 s
    assert not gamma_grid.extra_rounds_allowed(clock, 100.0, 4, 10)  # 50 s > 40 s


def test_unreadable_cells_are_hatched():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"gamma_strong": 0.0, "gamma_weak": 0.5, "wide": 1},
            {"gamma_strong": 0.0, "gamma_weak": 0.0, "wide": 0},
            {"gamma_strong": 0.5, "gamma_weak": 0.5, "wide": 1}]
    fig, ax = plt.subplots()
    assert gamma_grid.mark_unreadable(ax, rows, [0.0, 0.5], "wide") == 2
    hatched = sorted(p.get_xy() for p in ax.patches if p.get_hatch())
    assert hatched == [(0.5, -0.5), (0.5, 0.5)]
    plt.close(fig)


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


def test_compile_runs_the_blocks_through_torch_compile(tmp_path, monkeypatch):
    """--compile: the blocks compile with dynamic token counts (compile_blocks), so the three
    references (different drop rates) share the graphs of the block code paths, all traced in
    warm-up calls (the budget leaves the cells out; eager backend: inductor's C++ build would
    take minutes on CPU)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=backend, **kw))
    torch._dynamo.reset()
    try:
        record = gamma_grid.main([*TINY, "--step", "0.5", "--compile", "--budget-s", "1e-9",
                                  "--out", str(tmp_path)])
    finally:
        torch._dynamo.reset()
    assert record["compiled"] is True and record["cells"] == 0
    assert 1 <= len(graphs) <= 2  # the plain block and the block after a fused route start


def test_max_repeats_below_repeats_is_an_error(capsys):
    with pytest.raises(SystemExit):
        gamma_grid.parse_args(["--repeats", "8", "--max-repeats", "7"])
    assert "--max-repeats must be at least --repeats (8)" in capsys.readouterr().err


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
