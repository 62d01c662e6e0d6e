"""benchmarks/bench_kernels.py: shapes, bytes / FLOPs models, baselines, the --quick run."""
import csv

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
