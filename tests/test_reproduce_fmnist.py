"""benchmarks/reproduce_fmnist.py: the cached, resumable Fashion-MNIST reproduction.

End to end with --quick (30 training steps, 64 samples, stand-in classifier) on Fashion-MNIST
(skipped when the idx files are missing): a report row per method with finite metrics, and a
rerun that reuses every cached stage. Unit checks of the seeding, the scale choice and the
training-time bookkeeping run in process."""
import csv
import json
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from sgkernels.eval import FrechetReference, bootstrap, gaussian_stats

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce_fmnist.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from reproduce import methods as methods_mod
from reproduce.generate import inputs
from reproduce.paired import differences
from reproduce.scoring import FID_REPLICATES
from reproduce.training import trained_seconds

FMNIST = Path(os.environ.get("SGKERNELS_FMNIST", "/usr/share/datasets/fashion-mnist"))
needs_data = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST idx files are not installed")
FINITE = ("cfd", "kid", "precision", "recall", "acc", "nfe_per_step", "gflops_per_step")


def _run(out: Path, cache: Path, *extra) -> str:
    env = {**os.environ, "SGKERNELS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _rows(out: Path) -> dict:
    with open(out / "report" / "final.csv", newline="") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def _mtimes(out: Path) -> dict:
    watched = [p for p in out.rglob("*") if p.suffix in (".pt", ".npz", ".json")
               and "report" not in p.parts]
    return {p: p.stat().st_mtime_ns for p in watched}


@needs_data
def test_quick_subset_end_to_end_then_rerun_reuses_cache(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    chosen = "unguided,cfg,sg-0.5-0.9"
    _run(out, cache, "--methods", chosen)
    rows = _rows(out)
    assert sorted(rows) == sorted(chosen.split(","))
    for row in rows.values():
        for name in FINITE:
            assert math.isfinite(float(row[name])), (row["method"], name, row[name])
        assert int(row["num"]) == 64
    assert float(rows["unguided"]["nfe_per_step"]) == 1.0
    assert float(rows["cfg"]["nfe_per_step"]) == 2.0
    assert float(rows["sg-0.5-0.9"]["nfe_per_step"]) == 2.0
    # SG's two branches drop tokens, CFG's two are dense: fewer FLOPs at the same NFE
    assert float(rows["sg-0.5-0.9"]["gflops_per_step"]) < float(rows["cfg"]["gflops_per_step"])
    assert float(rows["cfg"]["gflops_per_step"]) == pytest.approx(
        2 * float(rows["unguided"]["gflops_per_step"]))
    assert (out / "train" / "routed" / "checkpoints" / "0000010.pt").exists()  # early step
    report = (out / "report" / "report.md").read_text()
    assert all(f"| {methods_mod.BY_NAME[n].label} |" in report for n in chosen.split(","))
    assert all((out / "report" / "grids" / f"{n}.png").exists() for n in chosen.split(","))
    pairs = {(r["a"], r["b"]): r for r in json.loads((out / "report" / "paired.json").read_text())}
    assert set(pairs) == {("sg-0.5-0.9", "cfg"), ("cfg", "unguided")}
    for r in pairs.values():
        assert r["num"] == 64 and r["num_fid"] == 0 and "fid" not in r
        assert math.isfinite(r["cfd"]["value"]) and r["cfd"]["std"] > 0
    assert "## Paired differences" in report and (out / "report" / "paired.png").exists()

    before = _mtimes(out)
    log = _run(out, cache, "--methods", chosen)
    assert "train/routed: done at step 30 (cached)" in log
    assert ": samples 0.." not in log and "] sweep " not in log and "] final " not in log
    assert _mtimes(out) == before
    assert _rows(out) == rows


@needs_data
@pytest.mark.slow
def test_quick_all_methods_report_a_finite_row_each(tmp_path):
    out = tmp_path / "run"
    _run(out, tmp_path / "cache")
    rows = _rows(out)
    assert sorted(rows) == sorted(m.name for m in methods_mod.METHODS)
    for row in rows.values():
        for name in FINITE:
            assert math.isfinite(float(row[name])), (row["method"], name, row[name])
    assert {rows[n]["model"] for n in ("dense-unguided", "dense-cfg")} == {"dense"}


def test_inputs_same_per_index_disjoint_between_splits():
    config = Namespace(in_channels=1, input_size=8)
    noise, labels = inputs("sweep", 0, 20, config, "cpu")
    part, part_labels = inputs("sweep", 10, 20, config, "cpu")
    assert torch.equal(noise[10:], part) and torch.equal(labels[10:], part_labels)
    assert labels.tolist() == [i % 10 for i in range(20)]
    final, _ = inputs("final", 0, 20, config, "cpu")
    assert not torch.isclose(noise, final).all(dim=(1, 2, 3)).any()
    with pytest.raises(ValueError, match="split"):
        inputs("test", 0, 4, config, "cpu")


def _fake_reproduction(tmp_path):
    import reproduce_fmnist
    args = reproduce_fmnist.parse_args(["--out", str(tmp_path)])
    return reproduce_fmnist.Reproduction(args, log=lambda *_: None)


def _write_sweep_point(rep, method, scale, cfd: float) -> Path:
    """A cached sweep point of `method` at `scale` with classifier FD `cfd`; returns its path."""
    path = rep.sweep_path(method, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scale": list(scale), "cfd": cfd}))
    return path


def test_best_scale_is_lowest_sweep_cfd_and_waits_for_the_whole_grid(tmp_path):
    rep = _fake_reproduction(tmp_path)
    method = methods_mod.BY_NAME["cfgsg-direct"]
    values = [3.0 + i for i in range(len(method.grid))]
    values[1] = 1.0
    for scale, cfd in zip(method.grid, values):
        last = _write_sweep_point(rep, method, scale, cfd)
    assert rep.best_scale(method) == method.grid[1]
    last.unlink()
    assert rep.best_scale(method) is None


class _Counting:
    """A FrechetReference that records the size of every set it scores."""

    def __init__(self, ref, calls):
        self.ref, self.calls = ref, calls

    def distance_to(self, features):
        self.calls.append(len(features))
        return self.ref.distance_to(features)


def _paired_sets(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(4000, d))
    noise = rng.normal(size=(n, d))           # shared per sample index, as in generate.py
    agree = (rng.random(n) < 0.8).astype(np.float64)
    return FrechetReference(*gaussian_stats(ref)), noise, agree


def test_paired_difference_of_a_set_with_itself_is_exactly_zero():
    fr, x, agree = _paired_sets()
    out = differences({"cfd": x, "agree": agree}, {"cfd": x.copy(), "agree": agree},
                      {"cfd": fr}, replicates=20)
    for m in ("cfd", "acc"):
        assert out[m]["value"] == 0 and out[m]["std"] == 0 and out[m]["low"] == out[m]["high"]


def test_paired_interval_is_narrower_than_unpaired_and_finds_a_small_shift():
    fr, noise, agree = _paired_sets()
    a = 1.5 + 1.2 * noise                  # A: far from the reference, as generated sets are
    b = a + 0.1                            # B: the same samples moved a little further away
    out = differences({"cfd": a, "agree": agree}, {"cfd": b, "agree": agree},
                      {"cfd": fr}, replicates=50)
    expected = fr.distance_to(a) - fr.distance_to(b)
    assert out["cfd"]["value"] == pytest.approx(expected)
    assert out["cfd"]["high"] < 0          # A better, beyond the noise
    single = bootstrap(lambda idx: {"fd": fr.distance_to(a[idx])}, len(a), 50)
    assert out["cfd"]["std"] < single["fd"]["std"] / 3


def test_paired_fid_uses_the_first_samples_and_fewer_replicates():
    fr, noise, agree = _paired_sets()
    a, b = 1.5 + 1.2 * noise, 1.6 + 1.2 * noise
    part = 100
    out = differences({"cfd": a, "fid": a[:part], "agree": agree},
                      {"cfd": b, "fid": b[:part], "agree": agree},
                      {"cfd": fr, "fid": fr}, replicates=50)
    assert out["fid"]["value"] == pytest.approx(fr.distance_to(a[:part]) - fr.distance_to(b[:part]))
    assert out["fid"]["high"] < 0 and out["cfd"]["high"] < 0
    calls = []
    counting = {"cfd": fr, "fid": _Counting(fr, calls)}
    differences({"cfd": a, "fid": a[:part], "agree": agree},
                {"cfd": b, "fid": b[:part], "agree": agree}, counting, replicates=50)
    assert len(calls) == 2 * (1 + FID_REPLICATES)   # estimate + capped replicates, A and B
    assert all(n == part for n in calls[:2]) and all(n <= part for n in calls)
    no_fid = differences({"cfd": a, "agree": agree}, {"cfd": b, "agree": agree},
                         {"cfd": fr, "fid": fr}, replicates=5)
    assert set(no_fid) == {"cfd", "acc"}
    with pytest.raises(ValueError, match="same N"):
        differences({"cfd": a, "fid": a[:part], "agree": agree},
                    {"cfd": b, "fid": b[:part - 1], "agree": agree}, {"cfd": fr, "fid": fr}, 5)


def test_paired_difference_rejects_sets_of_different_size():
    fr, x, agree = _paired_sets()
    with pytest.raises(ValueError, match="same number"):
        differences({"cfd": x, "agree": agree}, {"cfd": x[:-1], "agree": agree[:-1]},
                    {"cfd": fr}, replicates=5)


def test_best_rule_is_lowest_final_cfd_once_every_rule_has_its_final(tmp_path):
    rep = _fake_reproduction(tmp_path)
    rules = [m for m in methods_mod.METHODS if m.name.startswith("cfgsg-")]
    for i, m in enumerate(rules):
        path = tmp_path / "final" / m.name / "metrics.json"
        path.parent.mkdir(parents=True)
        cfd = 1.0 if m.name == "cfgsg-ip2p" else 5.0 + i
        path.write_text(json.dumps({"num": 5000, "metrics": {"cfd": {"value": cfd}}}))
    assert rep.best_rule().name == "cfgsg-ip2p"
    path.write_text(json.dumps({"num": 64, "metrics": {"cfd": {"value": 1.0}}}))
    assert rep.best_rule() is None                  # a final of another size does not count
    path.unlink()
    assert rep.best_rule() is None


def test_bootstrap_needs_two_replicates():
    import reproduce_fmnist
    with pytest.raises(SystemExit):
        reproduce_fmnist.parse_args(["--bootstrap", "1"])


def test_trained_seconds_sums_sessions(tmp_path):
    assert trained_seconds(tmp_path) == 0.0
    (tmp_path / "log.csv").write_text(
        "step,loss,lr,steps_per_s,images_per_s,elapsed_s\n"
        "20,1,1,1,1,10\n40,1,1,1,1,30\n60,1,1,1,1,5\n80,1,1,1,1,12\n")
    assert trained_seconds(tmp_path) == pytest.approx(42.0)


def test_trained_seconds_drops_steps_redone_after_resume(tmp_path):
    (tmp_path / "log.csv").write_text(
        "step,loss,lr,steps_per_s,images_per_s,elapsed_s\n"
        "20,1,1,1,1,10\n40,1,1,1,1,30\n60,1,1,1,1,50\n"     # session 1, checkpoint at 40
        "60,1,1,1,1,7\n80,1,1,1,1,12\n100,1,1,1,1,20\n")     # resumed at 40
    assert trained_seconds(tmp_path) == pytest.approx(30 + 20)
    assert trained_seconds(tmp_path, resume_step=80) == pytest.approx(30 + 12)
    assert trained_seconds(tmp_path, resume_step=40) == pytest.approx(30)


def test_method_table_and_selection():
    names = [m.name for m in methods_mod.METHODS]
    assert len(set(names)) == len(names)
    assert {f"cfgsg-{r}" for r in ("direct", "inner", "compositional", "ip2p")} <= set(names)
    assert methods_mod.scale_key((1.5, 0.5)) == "1.5_0.5" and methods_mod.scale_key(()) == "none"
    assert [m.name for m in methods_mod.select("cfg,unguided")] == ["unguided", "cfg"]
    with pytest.raises(ValueError, match="unknown"):
        methods_mod.select("cfg,nope")


def test_196_token_setting_uses_its_preset_folder_and_table():
    import reproduce_fmnist
    from reproduce.training import PRESETS, command

    from sgkernels import presets
    args = reproduce_fmnist.parse_args(["--tokens", "196"])
    assert (args.out, args.train_minutes) == ("runs/reproduce-196", 150.0)
    assert presets.get(PRESETS[196]).num_tokens == 196
    routes = presets.get(PRESETS[196]).routes
    assert len(routes) == 1 and routes[0].end - routes[0].start + 1 >= 6   # most of the depth
    cmd = command(Path("x"), "dense", 1.0, False, "cpu", 196)
    assert cmd[cmd.index("--model") + 1] == "FMNIST-CPU/2" and "routes=[]" in cmd
    table = methods_mod.select(None, 196)
    groups = {m.group for m in table if m.group}
    assert groups == {"rule", "sg-mild"}
    assert all(m.headline for m in table if m.group)
    with pytest.raises(ValueError, match="at 196 tokens"):
        methods_mod.select("cfgsg-ip2p", 196)
    with pytest.raises(SystemExit):
        reproduce_fmnist.parse_args(["--tokens", "100"])


def test_only_the_best_member_of_a_group_gets_a_final(tmp_path):
    import reproduce_fmnist
    args = reproduce_fmnist.parse_args(["--tokens", "196", "--out", str(tmp_path)])
    rep = reproduce_fmnist.Reproduction(args, log=lambda *_: None)
    members = [m for m in methods_mod.select(None, 196) if m.group == "sg-mild"]
    for i, m in enumerate(members):
        for j, scale in enumerate(m.grid):
            last = _write_sweep_point(rep, m, scale, 10.0 - 5 * i + j)
    assert rep.group_winner("sg-mild") == members[-1].name
    rep.final(members[0])                              # the loser: skipped before sampling
    assert not (tmp_path / "final" / members[0].name).exists()
    last.unlink()
    assert rep.group_winner("sg-mild") is None


def test_cost_stage_measures_training_and_sampling_per_image():
    from reproduce import cost
    result = cost.measure(49, batch=2, steps=8, timed=1, repeats=1)
    assert set(result["train_ms_per_image"]) == {"routed", "dense"}
    assert set(result["sample_s_per_image"]) == {"unguided", "cfg", "sg-0.5-0.9"}
    values = [*result["train_ms_per_image"].values(), *result["sample_s_per_image"].values()]
    assert all(v > 0 and math.isfinite(v) for v in values)
    assert "FMNIST-CPU/4 (49 tokens)" in cost.table(result)


def test_stop_past_minimum_ends_the_walk_at_the_first_worse_point(tmp_path):
    import reproduce_fmnist
    args = reproduce_fmnist.parse_args(["--tokens", "196", "--out", str(tmp_path),
                                        "--stop-past-minimum"])
    rep = reproduce_fmnist.Reproduction(args, log=lambda *_: None)
    (method,) = methods_mod.select("cfg", 196)
    cfds = [9.0, 7.0, 8.0]                           # any later, lower point is never reached
    assert len(method.grid) > len(cfds)
    for scale, cfd in zip(method.grid[:2], cfds):
        _write_sweep_point(rep, method, scale, cfd)
    assert rep.best_scale(method) is None            # 7 < 9: the walk goes on
    _write_sweep_point(rep, method, method.grid[2], cfds[2])
    assert rep.best_scale(method) == method.grid[1]
    assert [p["cfd"] for p in rep.sweep_points(method)] == cfds[:3]
    args.stop_past_minimum = False                   # without the flag every point is needed
    assert rep.best_scale(method) is None


@pytest.mark.parametrize("fid_all", [False, True])
def test_fid_all_scores_methods_that_are_not_headline(tmp_path, fid_all):
    import reproduce_fmnist
    argv = ["--tokens", "196", "--out", str(tmp_path), "--num-final", "8", "--num-fid", "8"]
    args = reproduce_fmnist.parse_args(argv + (["--fid-all"] if fid_all else []))
    rep = reproduce_fmnist.Reproduction(args, log=lambda *_: None)
    (method,) = methods_mod.select("autoguidance", 196)
    assert not method.headline
    for i, scale in enumerate(method.grid):             # the grid's best point: its second
        _write_sweep_point(rep, method, scale, abs(i - 1) + 1.0)
    folder = tmp_path / "final" / method.name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"num": 8, "scale": list(method.grid[1])}))
    scored = []
    rep.fid = lambda m, f: scored.append((m.name, f))    # the final itself is cached
    rep.final(method)
    assert scored == ([(method.name, folder)] if fid_all else [])
