"""benchmarks/gpu_check.sh: the plan fits the budget, over-budget configurations are refused,
--resume skips what passed, the GPU test selection, and the --cpu-smoke rehearsal with only
`python3` on PATH (what a lent GPU machine has)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RESULTS = ["gpu_check.log", "kernels.csv", "kernels.json", "gamma_grid.png", "gamma_grid.csv",
           "gamma_grid.json", "e2e.csv", "e2e.json"]
STEPS = ["environment", "cuda", "gpu_tests", "bench_kernels", "gamma_grid", "bench_e2e"]


def gpu_check(*args, env=None, timeout=600, **kwargs):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("GPU_CHECK_") and k != "OUT"}
    full.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def plan_rows(text):
    """{step: (cap, ends_by)} of the steps the printed plan runs."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\s+(\w+)\s+(\d+)\+?\s+(\d+)", line)
        if m and m.group(1) in STEPS:
            rows[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return rows


def test_default_plan_fits_the_budget_with_cumulative_end_times():
    run = gpu_check("--plan")
    assert run.returncode == 0, run.stderr
    assert "budget 360 s" in run.stdout
    rows = plan_rows(run.stdout)
    assert list(rows) == STEPS                                   # the order of the steps
    cumulative = 0
    for cap, ends_by in rows.values():
        cumulative += cap
        assert ends_by == cumulative
    assert cumulative <= 360
    # the timeline documented in the script's header and in benchmarks/README.md is this plan
    header = plan_rows("\n".join(line.lstrip("#") for line in SCRIPT.read_text().splitlines()
                                 if line.startswith("#")))
    assert header == rows
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    for step, (cap, ends_by) in rows.items():
        plus = "+" if step == "bench_e2e" else ""
        assert f"| `{step}` | {cap}{plus} | {ends_by} |" in readme, step


@pytest.mark.parametrize("env", [{"GPU_CHECK_BUDGET_S": "300"},
                                 {"GPU_CHECK_CAP_BENCH_KERNELS": "400"},
                                 {"GPU_CHECK_BUDGET_S": "120", "GPU_CHECK_CAP_GPU_TESTS": "90"}])
def test_caps_over_the_budget_are_refused_before_anything_runs(tmp_path, env):
    for args in (["--plan"], ["--cpu-smoke"]):
        run = gpu_check(*args, env=dict(env, GPU_CHECK_DIR=str(tmp_path / "work"),
                                        OUT=str(tmp_path / "out")))
        assert run.returncode == 2 and "refusing" in run.stderr, run.stderr
        assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_only_and_cap_overrides_change_what_must_fit():
    run = gpu_check("--plan", "--only", "bench_kernels", env={"GPU_CHECK_BUDGET_S": "120"})
    assert run.returncode == 0, run.stderr
    rows = plan_rows(run.stdout)
    assert set(rows) == {"environment", "bench_kernels"}        # environment always runs
    assert "SKIP: not in --only" in run.stdout
    run = gpu_check("--plan", env={"GPU_CHECK_CAP_BENCH_KERNELS": "200",
                                   "GPU_CHECK_BUDGET_S": "465"})
    assert run.returncode == 0 and plan_rows(run.stdout)["bench_kernels"][0] == 200


@pytest.mark.parametrize("args", [["--gpu"], ["--only", "nonsense"]])
def test_rejects_unknown_arguments(args):
    run = gpu_check(*args)
    assert run.returncode == 2 and ("usage" in run.stderr or "unknown step" in run.stderr)


def _fake_earlier_run(work, statuses):
    work.mkdir(parents=True)
    lines = ["mode cpu-smoke"] + [f"{s} {statuses.get(s, 'pass')} 7" for s in STEPS]
    (work / "gpu_check.state").write_text("\n".join(lines) + "\n")
    (work / "gpu_check.log").write_text("LINE OF THE EARLIER RUN\n")
    for name in RESULTS[1:]:
        (work / name).write_text(f"earlier {name}\n")


def test_resume_skips_passed_steps_reruns_the_rest_and_keeps_outputs(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    _fake_earlier_run(work, {"bench_e2e": "timeout"})
    run = gpu_check("--cpu-smoke", "--resume", env={"GPU_CHECK_DIR": str(work), "OUT": str(out)})
    log = (work / "gpu_check.log").read_text()
    assert run.returncode == 0, log[-3000:]
    assert log.startswith("LINE OF THE EARLIER RUN\n") and "===== resumed" in log  # appended
    for s in ("cuda", "gpu_tests", "bench_kernels", "gamma_grid"):
        assert f"SKIP {s}: passed in an earlier run" in log and f"START {s}" not in log
    assert "START environment" in log and "PASS bench_e2e" in log
    assert "--resume --out" in log                  # the benchmark continues its own CSV
    for name in ("kernels.csv", "kernels.json", "gamma_grid.png", "gamma_grid.csv"):
        assert (work / name).read_text() == f"earlier {name}\n"    # outputs of passed steps kept
        assert (out / name).read_text() == f"earlier {name}\n"     # ... and copied to $OUT
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULTS)   # no state file in $OUT
    state = (work / "gpu_check.state").read_text().splitlines()
    assert state[0] == "mode cpu-smoke" and "bench_e2e pass" in " ".join(state)


def test_a_run_without_resume_starts_afresh(tmp_path):
    work = tmp_path / "work"
    _fake_earlier_run(work, {})
    run = gpu_check("--cpu-smoke", "--only", "environment", env={"GPU_CHECK_DIR": str(work)})
    assert run.returncode == 0, run.stdout[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["gpu_check.log", "gpu_check.state"]
    assert "EARLIER" not in (work / "gpu_check.log").read_text()
    assert (work / "gpu_check.state").read_text().splitlines() == \
        ["mode cpu-smoke", f"environment pass {_secs(work, 'environment')}"]


def _secs(work, step):
    for line in (work / "gpu_check.state").read_text().splitlines():
        if line.startswith(step + " "):
            return line.split()[2]


def test_state_of_another_mode_is_not_resumed(tmp_path):
    work = tmp_path / "work"
    _fake_earlier_run(work, {})
    state = work / "gpu_check.state"
    state.write_text(state.read_text().replace("mode cpu-smoke", "mode gpu"))
    run = gpu_check("--cpu-smoke", "--resume", "--plan", env={"GPU_CHECK_DIR": str(work)})
    assert run.returncode == 0 and "nothing to resume" in run.stderr
    assert set(plan_rows(run.stdout)) == set(STEPS)
    # a GPU run's rows must not be continued by a CPU run: it starts afresh
    run = gpu_check("--cpu-smoke", "--resume", "--only", "environment",
                    env={"GPU_CHECK_DIR": str(work)})
    assert run.returncode == 0 and "nothing to resume" in run.stderr
    assert sorted(p.name for p in work.iterdir()) == ["gpu_check.log", "gpu_check.state"]
    assert "EARLIER" not in (work / "gpu_check.log").read_text()


COLLECTOR = """
import json, os


def pytest_collection_finish(session):
    items = []
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        dtype = params.get("dtype")
        items.append([item.nodeid, item.originalname,
                      None if dtype is None else str(dtype).removeprefix("torch."),
                      params.get("name")])
    with open(os.environ["GPU_SELECTION_OUT"], "w") as f:
        json.dump(items, f)
"""


def test_gpu_test_selection_runs_each_test_once_in_bf16_plus_one_fp16_case_per_op(tmp_path):
    run = gpu_check("--print-test-selection")
    args = run.stdout.split("\n")[:-1]
    assert run.returncode == 0 and args[:3] == ["-m", "gpu", "tests"]
    deselected = {args[k + 1] for k, a in enumerate(args) if a == "--deselect"}
    ignored = {a.split("=", 1)[1] for a in args if a.startswith("--ignore=")}
    assert ignored == {"tests/kernels/test_cuda.py"}              # the cuda step runs it
    (tmp_path / "gpu_selection_collector.py").write_text(COLLECTOR)
    env = dict(os.environ, GPU_SELECTION_OUT=str(tmp_path / "items.json"),
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", "-p", "gpu_selection_collector",
                              "-m", "gpu", "tests"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert collect.returncode == 0, collect.stdout[-3000:]
    items = json.loads((tmp_path / "items.json").read_text())
    everything = {nodeid: (func, dtype, name) for nodeid, func, dtype, name in items}
    assert deselected <= set(everything), deselected - set(everything)   # no stale ids
    kept = {n: v for n, v in everything.items()
            if n not in deselected and not any(n.startswith(i) for i in ignored)}
    assert len(kept) < len(everything) - 200
    by_op = {}
    for nodeid, (func, dtype, name) in everything.items():
        if dtype is not None:
            by_op.setdefault((nodeid.split("::")[0], func, name), []).append((nodeid, dtype))
    for (path, func, name), cases in by_op.items():
        if path in ignored:
            continue
        kept_dtypes = [dtype for nodeid, dtype in cases if nodeid in kept]
        assert all(nodeid in kept for nodeid, dtype in cases if dtype == "bfloat16"), func
        assert "float32" not in kept_dtypes, (func, "fp32 cases are trimmed")
        fp16 = kept_dtypes.count("float16")
        had_fp16 = any(dtype == "float16" for _, dtype in cases)
        if name in ("swiglu_packed", "varlen_attention_hd72"):      # variants of an op
            assert fp16 == 0, name
        else:
            assert fp16 == int(had_fp16), (path, func, name)


@pytest.mark.slow
def test_cpu_smoke_with_only_python3_on_path_then_resume(tmp_path):
    """The rehearsal CI runs: every step passes with only python3 (no `python`) on PATH and a
    second run with --resume skips them all, keeping the outputs and appending to the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "python3").chmod(0o755)
    for tool in ("bash", "env", "timeout", "date", "mktemp", "tee", "cat", "cp", "mv", "rm",
                 "mkdir", "sed", "dirname", "ls", "nproc", "tail"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "GPU_CHECK_DIR": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out")}
    probe = subprocess.run([str(bin_dir / "bash"), "-c", "command -v python"],
                           env={"PATH": str(bin_dir)}, capture_output=True)
    assert probe.returncode != 0                                  # no `python` there
    run = gpu_check("--cpu-smoke", env=env)
    out, work = tmp_path / "out", tmp_path / "work"
    log = (work / "gpu_check.log").read_text()
    assert run.returncode == 0, log[-3000:]
    for s in STEPS:
        assert f"PASS {s}" in log
    assert "python3 -m pytest" in log and " -n 1 " in log and "--timeout" in log
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULTS)
    for name in ("kernels.json", "gamma_grid.json", "e2e.json"):
        assert json.loads((out / name).read_text())["complete"] is True
    before = {name: (out / name).read_bytes() for name in RESULTS[1:]}

    again = gpu_check("--cpu-smoke", "--resume", env=env)
    log2 = (work / "gpu_check.log").read_text()
    assert again.returncode == 0, log2[-3000:]
    assert log2.startswith(log) and "===== resumed" in log2
    for s in STEPS[1:]:
        assert f"SKIP {s}: passed in an earlier run" in log2[len(log):]
    assert {name: (out / name).read_bytes() for name in RESULTS[1:]} == before
