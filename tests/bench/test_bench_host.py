"""benchmarks/bench_host.py: host time per call of every public op, forward and fwd+bwd."""
import json

import bench_host


def test_every_op_and_mode_is_timed_against_its_backend(tmp_path):
    rows = bench_host.main(["--calls", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert {(r["op"], r["mode"]) for r in rows} == {
        (op, mode) for op in bench_host.cases() for mode in ("fwd", "fwd+bwd")}
    assert all(r["us_op"] > 0 and r["us_backend"] > 0 for r in rows)
    assert all(r["us_host"] == r["us_host"] for r in rows)                 # not NaN
    record = json.loads((tmp_path / "host.json").read_text())
    assert record["complete"] and len(record["rows"]) == len(rows)
    assert (tmp_path / "host.csv").exists()
