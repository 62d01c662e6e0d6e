"""benchmarks/bench_kernels.py: shapes, bytes / FLOPs models, baselines, the --quick run."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bench_kernels as bk
import pytest
import torch

from sgkernels import ops
from sgkernels.model import keep_count

CPU = torch.device("cpu")


def shape(layout="packed", batch=2, tokens=16, dim=32, heads=2, dtype=torch.float32):
    return bk.Shape(layout, batch, tokens, dim, heads, dtype, CPU)


def test_layouts_are_dense_routed_and_sg_packed():
    assert bk.segment_lengths("dense", 3, 256) == [256] * 3
    assert bk.segment_lengths("routed", 2, 256) == [128, 128]
    assert bk.segment_lengths("packed", 2, 256) == [128, 128, 26, 26]
    with pytest.raises(ValueError, match="layout"):
        bk.segment_lengths("sparse", 2, 256)
    assert bk.Shape("dense", 1, 256, 1152, 16, torch.bfloat16, CPU).hidden == 3072


def test_route_indices_keep_half_of_every_segment_in_order():
    s = shape("packed", batch=3, tokens=16)
    idx = bk.make_inputs("route_gather", s, torch.Generator().manual_seed(0))["idx"]
    bounds = torch.tensor(s.lengths).cumsum(0).tolist()
    starts = [0] + bounds[:-1]
    for start, end, n in zip(starts, bounds, s.lengths):
        rows = idx[(idx >= start) & (idx < end)]
        assert rows.numel() == keep_count(n, 0.5)
        assert torch.equal(rows, rows.sort().values)
    assert idx.unique().numel() == idx.numel()


def test_traffic_counts_inputs_once_and_outputs_once():
    gen = torch.Generator().manual_seed(0)
    s = shape("dense", batch=2, tokens=16, dim=32)       # 32 rows of 32 fp32 channels, 2 segments
    rows, dim, e = 32, 32, 4
    i = bk.make_inputs("rms_norm", s, gen)
    assert bk.traffic("rms_norm", "fwd", i) == e * (2 * rows * dim + dim) + 4 * rows
    assert bk.traffic("rms_norm", "bwd", i) == e * (3 * rows * dim + 2 * dim) + 4 * rows
    i = bk.make_inputs("rms_norm_modulate", s, gen)
    assert bk.traffic("rms_norm_modulate", "fwdbwd", i) == (
        e * (2 * rows * dim + dim + 2 * 2 * dim) + 8 * rows
        + e * (3 * rows * dim + 2 * dim + 3 * 2 * dim) + 8 * rows)
    i = bk.make_inputs("swiglu", s, gen)
    assert bk.traffic("swiglu", "fwd", i) == 3 * e * rows * s.hidden
    i = bk.make_inputs("route_gather", s, gen)
    kept = i["idx"].numel()
    assert bk.traffic("route_gather", "fwd", i) == 2 * e * kept * dim + 8 * kept
    i = bk.make_inputs("route_scatter", s, gen)
    assert bk.traffic("route_scatter", "bwd", i) == e * (2 * rows * dim + kept * dim) + 8 * kept


def test_attention_flops_are_4_sum_l2_h_dh_and_backward_2_5x():
    s = shape("packed", batch=2, tokens=16, dim=32, heads=2)   # lengths 8, 8, 2, 2; Dh 16
    i = bk.make_inputs("varlen_attention", s, torch.Generator().manual_seed(0))
    fwd = 4 * (8 * 8 * 2 + 2 * 2 * 2) * 2 * 16
    assert bk.attention_flops("fwd", i) == fwd
    assert bk.attention_flops("bwd", i) == 2.5 * fwd
    assert bk.attention_flops("fwdbwd", i) == 3.5 * fwd


def test_timed_baselines_make_no_host_sync(monkeypatch):
    """SDPA's length groups are computed before timing: the timed call copies nothing to the
    host (no .tolist() / .item() of a device tensor)."""
    s = shape("packed", batch=2, tokens=16, dim=32, heads=2)
    i = bk.make_inputs("varlen_attention", s, torch.Generator().manual_seed(1))
    fn = bk.prepared(bk.sdpa_grouped, i)
    runs = {mode: bk.runner(fn, i, mode) for mode in bk.MODES}
    expected = bk.sdpa_grouped(i)

    def host_sync(*args, **kwargs):
        raise AssertionError("host sync inside the timed region")
    monkeypatch.setattr(torch.Tensor, "tolist", host_sync)
    monkeypatch.setattr(torch.Tensor, "item", host_sync)
    torch.testing.assert_close(fn(i), expected)
    for run in runs.values():
        run()
    assert bk.length_groups.__name__  # unprepared calls would sync: they build the groups
    with pytest.raises(AssertionError, match="host sync"):
        bk.sdpa_grouped(i)


def test_length_groups_are_runs_of_equal_lengths():
    cu = torch.tensor([0, 8, 16, 18, 20, 25], dtype=torch.int32)
    assert bk.length_groups(cu) == [(0, 2, 8), (16, 2, 2), (20, 1, 5)]


def test_cuda_defaults_are_the_dit_shapes_largest_first():
    cfg = bk.settings(bk.parse_args([]), cuda=True)
    assert cfg["dims"] == [1152, 2048] and cfg["heads"] == 16 and cfg["tokens"] == 256
    assert cfg["batches"] == [256, 16] and cfg["attn_head_dims"] == [64]
    assert cfg["dtype"] == torch.bfloat16 and cfg["compile"] is True
    groups = bk.shape_groups(cfg["dims"], cfg["heads"], cfg["batches"], cfg["attn_head_dims"],
                             bk.OPS)
    assert [(b, d) for b, d, _ in groups] == [(256, 1152), (256, 2048), (256, 1024),
                                              (16, 1152), (16, 2048), (16, 1024)]
    assert groups[2][2] == ["rope_axial", "varlen_attention"]   # head dim 64: attention only
    assert {d // cfg["heads"] for _, d, _ in groups} == {72, 128, 64}
    # SiT-XL/2 at batch 256: 65536 rows of D 1152 in the dense layout, timed first
    first = bk.Shape("dense", 256, 256, 1152, 16, torch.bfloat16, CPU)
    assert sum(first.lengths) == 65536 and first.head_dim == 72
    # an extra head dim equal to one of the widths' is not timed twice
    assert len(bk.shape_groups([1024], 16, [2], [64], bk.OPS)) == 1


def test_compile_rows_come_after_the_other_rows_of_their_shape_group():
    impls = {op: ["sg:torch", "eager", "compile"] for op in bk.OPS}
    groups = bk.shape_groups([32, 64], 2, [4, 2], [], ["rms_norm", "swiglu"])
    jobs = bk.plan_jobs(groups, 16, 2, bk.LAYOUTS, bk.MODES, impls, torch.float32, CPU)
    per_group = 2 * len(bk.LAYOUTS) * len(bk.MODES)
    assert len(jobs) == len(groups) * 2 * per_group
    for g, (batch, dim, _) in enumerate(groups):
        block = jobs[2 * g * per_group:2 * (g + 1) * per_group]
        assert {(j.shape.batch, j.shape.dim) for j in block} == {(batch, dim)}
        assert all(j.impls == ("sg:torch", "eager") for j in block[:per_group])
        assert all(j.impls == ("compile",) for j in block[per_group:])
    assert jobs[0].shape.batch == 4   # largest batch first


def test_sdpa_per_length_group_matches_sgkernels_attention():
    s = shape("packed", batch=2, tokens=16, dim=32, heads=2)
    i = bk.make_inputs("varlen_attention", s, torch.Generator().manual_seed(1))
    torch.testing.assert_close(bk.sdpa_grouped(i), bk.sg_call("varlen_attention", i),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", bk.OPS)
def test_every_implementation_computes_the_op(op):
    """Baselines must compute what sgkernels computes, or the comparison means nothing."""
    i = bk.make_inputs(op, shape("packed"), torch.Generator().manual_seed(2))
    expected = bk.sg_call(op, i)
    impls = bk.implementations(op, CPU, compile_ref=False)
    assert "sg:torch" in impls and (op == "varlen_attention") != ("eager" in impls)
    for name, fn in impls.items():
        torch.testing.assert_close(fn(i), expected, rtol=1e-5, atol=1e-5, msg=name)


def test_runner_backward_gives_the_gradients_of_the_op():
    i = bk.make_inputs("gated_residual", shape("routed"), torch.Generator().manual_seed(3))
    run = bk.runner(lambda d: bk.sg_call("gated_residual", d), i, "bwd")
    dx, dy, dgate = run()
    leaves = {k: (v.clone().requires_grad_(True) if v.is_floating_point() else v)
              for k, v in i.items()}
    out = ops.gated_residual(*leaves.values())
    # runner draws its own upstream gradient; the x-gradient of a residual is that gradient itself
    assert dx.shape == out.shape and dgate.shape == i["gate"].shape
    torch.testing.assert_close(dy, dx * i["gate"][i["seg"].long()])


def test_quick_run_times_every_op_mode_and_layout(tmp_path):
    rows = bk.main(["--quick", "--device", "cpu", "--warmup", "0", "--repeats", "1",
                    "--out", str(tmp_path)])
    assert not [r for r in rows if "error" in r]
    timed = {(r["op"], r["mode"], r["layout"]) for r in rows if r["impl"] == "sg:torch"}
    assert timed == {(o, m, lay) for o in bk.OPS for m in bk.MODES for lay in bk.LAYOUTS}
    with open(tmp_path / "kernels.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    attn = [r for r in written if r["op"] == "varlen_attention"]
    assert all(float(r["tflops"]) > 0 and float(r["frac_matmul"]) > 0 for r in attn)
    for r in written:
        assert float(r["gbps"]) == pytest.approx(float(r["bytes"]) / float(r["ms"]) / 1e6,
                                                 rel=1e-4)
    assert (tmp_path / "kernels.json").exists()


def test_rejects_shapes_the_ops_cannot_take(tmp_path):
    with pytest.raises(ValueError, match="head dim divisible by 4"):
        bk.main(["--quick", "--dims", "36", "--heads", "6", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="square"):
        bk.main(["--quick", "--tokens", "10", "--out", str(tmp_path)])


@pytest.mark.parametrize("op, baseline", [("rms_norm", "torch:rms_norm"),
                                          ("varlen_attention", "torch:sdpa_grouped"),
                                          ("swiglu", "eager"), ("route_scatter", "eager")])
def test_pytest_benchmark_tiny(benchmark, op, baseline):
    """pytest-benchmark cases on tiny shapes (`--benchmark-only` to compare runs); the timed
    result must equal a baseline outside sgkernels."""
    i = bk.make_inputs(op, shape("packed"), torch.Generator().manual_seed(4))
    out = benchmark.pedantic(bk.sg_call, args=(op, i), rounds=3, iterations=1)
    expected = bk.implementations(op, CPU, compile_ref=False)[baseline](i)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


BENCHMARKS = Path(bk.__file__).resolve().parent


def test_killed_run_keeps_the_cases_done_and_resume_completes_them(tmp_path):
    """SIGKILL mid-run: kernels.csv still parses and holds every case timed before the kill;
    --resume keeps those rows and times only the rest."""
    cmd = [sys.executable, str(BENCHMARKS / "bench_kernels.py"), "--quick", "--device", "cpu",
           "--warmup", "0", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(BENCHMARKS.parent))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path, deadline = tmp_path / "kernels.csv", time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.exists() and len(csv_path.read_text().splitlines()) > 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with open(csv_path) as f:
        killed = list(csv.DictReader(f))
    assert len(killed) >= 20 and all(r["ms"] and float(r["ms"]) > 0 for r in killed)
    record = json.loads((tmp_path / "kernels.json").read_text())   # written after the CSV
    assert record["complete"] is False and record["rows_written"] <= len(killed)
    assert len(killed) < record["cases_planned"]

    rows = bk.main(cmd[2:] + ["--resume"])
    record = json.loads((tmp_path / "kernels.json").read_text())
    assert record["complete"] is True and record["rows_resumed"] == len(killed)
    assert len(rows) == record["cases_planned"] and not [r for r in rows if "error" in r]
    keys = [bk.row_key(r) for r in rows]
    assert len(set(keys)) == len(keys)                      # nothing timed twice
    assert [bk.row_key(r) for r in rows[:len(killed)]] == \
        [bk.row_key(common_row) for common_row in _parsed(killed)]


def _parsed(rows):
    import common
    return [{k: common._parse_value(v) for k, v in r.items() if v != ""} for r in rows]


def test_budget_cut_is_reported_as_partial(tmp_path):
    """--budget-s leaves cases out as 'skipped' rows and the script exits 3 (EXIT_PARTIAL)."""
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_kernels.py"), "--quick",
                          "--device", "cpu", "--ops", "rms_norm", "--warmup", "0",
                          "--repeats", "1", "--budget-s", "1e-9", "--out", str(tmp_path)],
                         env=dict(os.environ, PYTHONPATH=str(BENCHMARKS.parent)),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    with open(tmp_path / "kernels.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["error"] == "skipped: --budget-s" for r in rows)
    assert json.loads((tmp_path / "kernels.json").read_text())["complete"] is False
