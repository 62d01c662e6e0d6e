"""benchmarks/common.py: flags, timing, ceilings, output files, heatmaps."""
import argparse
import csv
import json
import math
import time
from pathlib import Path

import common
import pytest
import torch

from sgkernels.runtime.device import resolve_device

CPU = torch.device("cpu")


def test_time_fn_calls_warmup_plus_repeats_and_reports_the_median():
    calls = []
    timing = common.time_fn(lambda: calls.append(1), CPU, warmup=2, repeats=5)
    assert len(calls) == 7
    assert len(timing.times) == 5 and all(t >= 0 for t in timing.times)
    assert common.Timing((3.0, 1.0, 2.0)).median == 2.0
    assert common.Timing((1.0, 2.0, 3.0)).spread == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [({"warmup": -1}, "warmup"), ({"repeats": 0}, "repeats")])
def test_time_fn_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        common.time_fn(lambda: None, CPU, **kwargs)


def test_time_interleaved_alternates_functions_and_ratios_are_per_round():
    order = []
    fns = [lambda: order.append("a"), lambda: order.append("b")]
    timings = common.time_interleaved(fns, CPU, repeats=3, warmup=(0, 2))
    assert order == ["b", "b"] + ["a", "b"] * 3
    assert [len(t.times) for t in timings] == [3, 3]
    num, den = common.Timing((2.0, 9.0, 4.0)), common.Timing((1.0, 3.0, 1.0))
    assert common.ratio_median(num, den) == 3.0  # median of 2, 3, 4 (not 4/1 of the medians)
    with pytest.raises(ValueError, match="one count per function"):
        common.time_interleaved(fns, CPU, warmup=(1,))


def test_ceilings_are_positive_and_finite():
    gbps = common.copy_bandwidth_gbps(CPU, nbytes=1 << 20, repeats=2)
    tflops = common.matmul_tflops(CPU, n=64, repeats=2)
    assert 0 < gbps < 1e5 and 0 < tflops < 1e3


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="is_available"):
            resolve_device("cuda")


def test_common_flags_take_each_benchmarks_defaults_and_help():
    p = argparse.ArgumentParser()
    common.add_common_flags(p, "outputs/x", budget_help="b", resume_help="r", quick_help="q")
    args = p.parse_args([])
    assert (args.device, args.threads, args.budget_s, args.resume, args.quick, args.out) == (
        "auto", None, None, False, False, Path("outputs/x"))
    helps = {a.dest: a.help for a in p._actions}
    assert (helps["threads"], helps["budget_s"], helps["resume"], helps["quick"]) == (
        common.THREADS_HELP, "b", "r", "q")
    bare = argparse.ArgumentParser()
    common.add_common_flags(bare, None, device="cpu", threads=False)
    args = bare.parse_args(["--out", "o"])
    assert vars(args) == {"device": "cpu", "out": "o"}
    device, threads = common.apply_common_flags(argparse.Namespace(device="cpu", threads=1))
    assert device == CPU and threads == 1 == torch.get_num_threads()
    with pytest.raises(ValueError, match="--device"):
        common.apply_common_flags(argparse.Namespace(device="tpu", threads=None))


def test_clock_counts_seconds_and_the_budget():
    clock = common.Clock()
    assert clock.elapsed() >= 0 and not clock.over_budget()
    short = common.Clock(1e-9)
    time.sleep(0.01)
    assert short.over_budget() and short.seconds() == round(short.elapsed(), 1)


def test_gamma_values():
    assert common.gamma_values(0.05) == [round(0.05 * i, 10) for i in range(20)]
    assert common.gamma_values(0.1)[-1] == 0.9 and len(common.gamma_values(0.1)) == 10
    assert common.gamma_values(0.3) == [0.0, 0.3, 0.6, 0.9]
    for bad in (0, 1, -0.1, True):
        with pytest.raises(ValueError, match="--step"):
            common.gamma_values(bad)


def test_write_csv_takes_the_union_of_columns(tmp_path):
    path = common.write_csv(tmp_path / "a" / "x.csv",
                            [{"a": 1, "b": 0.5}, {"b": math.nan, "c": "z"}])
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["a", "b", "c"]
    assert rows == [{"a": "1", "b": "0.5", "c": ""}, {"a": "", "b": "", "c": "z"}]


def test_write_json_and_machine_info(tmp_path):
    info = common.machine_info(CPU)
    for key in ("date_utc", "cpu", "torch", "device", "cpu_count", "python"):
        assert info[key]
    path = common.write_json(tmp_path / "m.json", {"machine": info, "dtype": torch.float32})
    back = json.loads(path.read_text())
    assert back["machine"]["torch"] == torch.__version__ and back["dtype"] == "torch.float32"


def test_heatmap_masks_invalid_cells_and_labels_the_valid_ones():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [[1.0, 2.0, 3.0], [math.nan, 4.0, 5.0], [math.nan, math.nan, 0.5]]
    fig, ax = plt.subplots()
    image = common.heatmap(ax, values, [0.0, 0.5, 0.9], "t", "{:.1f}", center=1.0)
    assert int(image.get_array().mask.sum()) == 3
    assert sorted(t.get_text() for t in ax.texts) == ["0.5", "1.0", "2.0", "3.0", "4.0", "5.0"]
    assert image.norm(1.0) == pytest.approx(0.5)  # the centre of the diverging scale
    plt.close(fig)


def test_results_rewrite_both_files_after_every_add(tmp_path):
    res = common.Results(tmp_path / "r.csv", tmp_path / "r.json", {"what": "x"},
                         key=lambda r: r["case"])
    res.add({"case": 1, "ms": 0.5})
    assert common.read_csv(tmp_path / "r.csv") == [{"case": 1, "ms": 0.5}]
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["what"] == "x" and record["complete"] is False and record["rows_written"] == 1
    res.add([{"case": 2, "ms": 1.5, "note": "b"}])
    assert [r["case"] for r in common.read_csv(tmp_path / "r.csv")] == [1, 2]
    res.finish(seconds=3)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["complete"] is True and record["seconds"] == 3 and record["rows_written"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temp files


def test_results_resume_keeps_measured_rows_and_drops_skipped_ones(tmp_path):
    first = common.Results(tmp_path / "r.csv", None, {}, key=lambda r: r["case"])
    first.add([{"case": "a", "ms": 1.0}, {"case": "b", "error": "skipped: --budget-s"},
               {"case": "c", "error": "RuntimeError: boom"}])
    again = common.Results(tmp_path / "r.csv", None, {}, key=lambda r: r["case"], resume=True)
    assert again.resumed == 2 and again.has("a") and again.has("c") and not again.has("b")
    again.add({"case": "b", "ms": 2.0})
    assert [r["case"] for r in common.read_csv(tmp_path / "r.csv")] == ["a", "c", "b"]
    fresh = common.Results(tmp_path / "r.csv", None, {}, key=lambda r: r["case"])
    assert fresh.rows == [] and not fresh.has("a")   # without resume nothing is read back


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = common.write_csv(tmp_path / "x.csv", [{"a": 1}])
    monkeypatch.setattr(common.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError, match="full"):
        common.write_csv(path, [{"a": 2}])
    assert common.read_csv(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_ratio_range_spans_the_per_round_ratios():
    num, den = common.Timing((2.0, 9.0, 4.0)), common.Timing((1.0, 3.0, 1.0))
    assert common.ratio_range(num, den) == (2.0, 4.0)
    with pytest.raises(ValueError, match="different lengths"):
        common.ratio_range(num, common.Timing((1.0,)))
