"""benchmarks/bench_e2e.py on the tiny preset: SG vs CFG sampling, TREAD vs dense training,
eager and compiled (aot_eager: the traced graphs, no code generation)."""
import json

import bench_e2e
import pytest

from sgkernels import presets
from sgkernels.flops import forward_gflops, sampling_gflops


def test_e2e_rows_hold_measured_and_predicted_speedups(tmp_path):
    rows = bench_e2e.main(["--device", "cpu", "--model", "Tiny/2", "--batches", "2",
                           "--train-batches", "2", "--repeats", "1", "--steps", "8",
                           "--compile-backend", "aot_eager", "--out", str(tmp_path)])
    config = presets.get("Tiny/2")
    assert {(r["part"], r["mode"]) for r in rows} == {
        (part, mode) for part in ("sampling", "training") for mode in ("eager", "compile")}
    compiled = {r["method"]: r for r in rows if r["part"] == "sampling" and r["mode"] != "eager"}
    assert set(compiled) == set(bench_e2e.methods())
    assert all(r["speedup_vs_eager"] > 0 and r["packed_gain"] > 0 for r in compiled.values())
    sampling = {r["method"]: r for r in rows if r["part"] == "sampling" and r["mode"] == "eager"}
    assert set(sampling) == set(bench_e2e.methods())
    gflops_cfg = sampling_gflops(config, bench_e2e.methods()["cfg"], 8)
    for name, r in sampling.items():
        assert r["gflops_per_image_step"] == sampling_gflops(config, bench_e2e.methods()[name], 8)
        assert r["predicted_speedup"] == pytest.approx(gflops_cfg / r["gflops_per_image_step"])
        assert r["speedup_vs_cfg"] > 0 and r["packed_gain"] > 0
    assert sampling["cfg"]["speedup_vs_cfg"] == 1.0
    dense, tread = [r for r in rows if r["part"] == "training" and r["mode"] == "eager"]
    assert (dense["method"], tread["method"]) == ("dense", "tread")
    assert tread["predicted_speedup"] == pytest.approx(
        forward_gflops(config, 0.0) / forward_gflops(config, None))
    assert tread["predicted_speedup"] > 1 and tread["speedup_vs_dense"] > 0
    record = json.loads((tmp_path / "e2e.json").read_text())
    assert record["model"] == "Tiny/2" and len(record["rows"]) == len(rows)
    assert record["modes"] == ["eager", "compile"] and record["compile_backend"] == "aot_eager"
    assert (tmp_path / "e2e.csv").exists()
