"""Stage `train`: the routed and the dense model through `python -m sgkernels train`.

Both runs use the preset of the token count (49: FMNIST-CPU/4, docs/training.md; 196:
FMNIST-CPU/2); the dense one overrides `routes=[]`, so it has the same parameters and trains every
token. They run as subprocesses (one thread each,
side by side) into OUT/train/{routed,dense}. A run folder that already has args.json is continued
with `--resume` (exact, see docs/training.md) for the training time still left:

    left = train_minutes − Σ_sessions elapsed_s (log.csv; elapsed_s restarts at every session)

where each session counts only up to the checkpoint the next one resumed from (steps past it were
redone, so their time is not training time of the model).

A run with less than MIN_LEFT minutes left counts as finished (its last checkpoint stands);
`done.json` marks a finished run, which later calls skip. All checkpoints are kept, so the early
checkpoint (step `early`) is `checkpoints/<early>.pt`.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import common

KINDS = ("routed", "dense")
PRESETS = {49: "FMNIST-CPU/4", 196: "FMNIST-CPU/2"}
FULL = dict(batch=32, steps=20000, ckpt_every=500, sample_every=1000, log_every=20, early=500)
MIN_LEFT = 0.5                           # minutes; less than this left counts as finished
QUICK = dict(batch=16, steps=30, ckpt_every=10, sample_every=0, log_every=5, early=10)


def settings(quick: bool) -> dict:
    return dict(QUICK if quick else FULL)


def run_dir(out: Path, kind: str) -> Path:
    return Path(out) / "train" / kind


def checkpoint(out: Path, kind: str, step: int | None = None) -> Path:
    """`latest.pt` of a run, or its checkpoint at `step`."""
    name = "latest.pt" if step is None else f"{step:07d}.pt"
    return run_dir(out, kind) / "checkpoints" / name


def trained_seconds(folder: Path, resume_step: int | None = None) -> float:
    """Training time over all sessions of a run, from log.csv (0 when there is none).

    A resumed session restarts at its checkpoint, so the steps an earlier session logged past
    that checkpoint were thrown away: each session counts up to its last row before the next
    session's first step, and the last one up to `resume_step` (the step of `latest.pt`) if given.
    """
    path = Path(folder) / "log.csv"
    if not path.exists():
        return 0.0
    sessions, last = [], None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, elapsed = int(row["step"]), float(row["elapsed_s"])
            if last is None or elapsed < last:           # a new session started
                sessions.append([])
            sessions[-1].append((step, elapsed))
            last = elapsed
    ends = [s[0][0] for s in sessions[1:]]
    ends.append(float("inf") if resume_step is None else resume_step + 1)
    return sum(max((e for step, e in rows if step < end), default=0.0)
               for rows, end in zip(sessions, ends))


def _latest_step(out: Path, kind: str) -> int | None:
    path = checkpoint(out, kind)
    if not path.exists():
        return None
    import torch
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def command(out: Path, kind: str, minutes: float, quick: bool, device: str,
            tokens: int = 49) -> list[str]:
    s = settings(quick)
    folder = run_dir(out, kind)
    cmd = [sys.executable, "-m", "sgkernels", "train", "--model", PRESETS[tokens]]
    if kind == "dense":
        cmd += ["--set", "routes=[]"]
    cmd += ["--data", "fashion-mnist", "--batch", str(s["batch"]), "--lr", "1e-3",
            "--warmup", "100", "--grad-clip", "1.0", "--ema-decay", "0.999",
            "--steps", str(s["steps"]), "--time-limit", f"{minutes:.3f}",
            "--ckpt-every", str(s["ckpt_every"]), "--sample-every", str(s["sample_every"]),
            "--log-every", str(s["log_every"]), "--seed", "0", "--device", device,
            "--no-progress", "--out", str(folder)]
    if (folder / "args.json").exists():
        cmd.append("--resume")
    return cmd


def _finish(out: Path, kind: str, seconds: float, step: int | None = None) -> dict:
    """Write and return the done.json record of a run from its latest checkpoint (at `step`,
    read from the checkpoint when not given)."""
    step = _latest_step(out, kind) if step is None else step
    record = {"step": step, "trained_s": round(trained_seconds(run_dir(out, kind), step), 1),
              "this_call_s": round(seconds, 1)}
    common.write_json(run_dir(out, kind) / "done.json", record)
    return record


def train(out: Path, minutes: float, quick: bool, device: str, log=print,
          tokens: int = 49) -> dict:
    """Train (or continue) both runs; returns {kind: done record}."""
    if not minutes > 0:
        raise ValueError(f"--train-minutes must be > 0, got {minutes}")
    procs, done = {}, {}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for kind in KINDS:
        folder = run_dir(out, kind)
        marker = folder / "done.json"
        if marker.exists():
            done[kind] = json.loads(marker.read_text())
            log(f"train/{kind}: done at step {done[kind]['step']} (cached)")
            continue
        step = _latest_step(out, kind)
        left = minutes - trained_seconds(folder, step) / 60.0
        if left < MIN_LEFT and step is not None:     # time used up: the last checkpoint stands
            done[kind] = _finish(out, kind, 0.0, step)
            log(f"train/{kind}: training time used up, done at step {done[kind]['step']}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        cmd = command(out, kind, max(left, MIN_LEFT), quick, device, tokens)
        log(f"train/{kind}: {'resuming' if '--resume' in cmd else 'starting'}, "
            f"{left:.1f} min left")
        handle = open(folder.parent / f"{kind}.log", "a")
        procs[kind] = (subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env),
                       handle, common.Clock())
    for kind, (proc, handle, clock) in procs.items():
        rc = proc.wait()
        handle.close()
        if rc != 0:
            raise RuntimeError(f"train/{kind} exited with {rc}; see "
                               f"{run_dir(out, kind).parent / (kind + '.log')}")
        done[kind] = _finish(out, kind, clock.elapsed())
        log(f"train/{kind}: done at step {done[kind]['step']}")
    early = checkpoint(out, "routed", settings(quick)["early"])
    if not early.exists():
        raise FileNotFoundError(f"early checkpoint {early} missing: the routed run stopped "
                                f"before step {settings(quick)['early']}")
    return done
