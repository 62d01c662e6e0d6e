"""Shared helpers of the benchmark scripts: flags, timing, measured ceilings, machine record,
output files.

Flags (`add_common_flags`): --device, --threads, --budget-s, --resume, --quick, --out, each with
the benchmark's own default and help; `apply_common_flags` resolves --device
(runtime.device.resolve_device) and applies --threads (`configure_threads`: 1 CPU thread on an
oversubscribed machine). `Clock` counts the run's seconds and tells when --budget-s is spent.

Timing (`time_fn`): `warmup` untimed calls, then `repeats` timed calls; the result is the median.
On CUDA every call is bracketed by a pair of `torch.cuda.Event`s (GPU time of the queued work);
on CPU it is wall clock (`time.perf_counter`) around the call. `time_interleaved` times several
callables round-robin and `ratio_median` takes speedups per round, so load drifts cancel;
`sampling_fn` wraps a few steps of `sgkernels.sample` for that.

Ceilings, measured in the same run as the numbers they bound (a roofline with two roofs):
    copy bandwidth   B = 2·n / t        a device-to-device copy of an n-byte tensor reads and
                                        writes every byte once
    matmul rate      F = 2·N³ / t       one N×N by N×N matmul (bf16 on CUDA, fp32 on CPU)
An op that moves `b` bytes in time `t` achieves b/t, i.e. the fraction (b/t)/B of the ceiling;
a compute-bound op doing `f` FLOPs achieves (f/t)/F.

Output files: `write_csv` / `write_json` replace the file atomically (runtime.files);
`Results` is a benchmark's CSV (+ JSON) rewritten after every case, so a run killed at any point
leaves every case it measured, and read back with `resume=True` so a rerun measures only the
missing cases. A benchmark whose --budget-s left cases out exits with EXIT_PARTIAL (3).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a source tree without `pip install`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from sgkernels.runtime.device import resolve_device  # noqa: E402
from sgkernels.runtime.files import write_text_atomic  # noqa: E402

THREADS_HELP = "CPU threads (default: torch's; 1 when the machine is oversubscribed)"


def add_common_flags(p: argparse.ArgumentParser, out: str | None, *, out_help: str | None = None,
                     device: str = "auto", device_help: str | None = None, threads: bool = True,
                     budget_help: str | None = None, resume_help: str | None = None,
                     quick_help: str | None = None) -> None:
    """Add the flags the benchmarks share to `p`; --budget-s, --resume and --quick only when
    their help text is given, --threads unless threads=False:
        --device    default `device` (apply_common_flags resolves it)
        --threads   CPU threads (THREADS_HELP)
        --budget-s  seconds after the start past which no new case starts (Clock.over_budget)
        --resume    keep the rows of an earlier run in --out (Results(resume=True))
        --quick     the benchmark's small settings
        --out       output folder: a Path defaulting to `out`; out=None: a str, default None
                    (the benchmark picks the folder after parsing)
    """
    p.add_argument("--device", default=device, help=device_help)
    if threads:
        p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    if budget_help is not None:
        p.add_argument("--budget-s", type=float, default=None, help=budget_help)
    if resume_help is not None:
        p.add_argument("--resume", action="store_true", help=resume_help)
    if quick_help is not None:
        p.add_argument("--quick", action="store_true", help=quick_help)
    if out is None:
        p.add_argument("--out", default=None, help=out_help)
    else:
        p.add_argument("--out", type=Path, default=Path(out), help=out_help)


def apply_common_flags(args) -> tuple[torch.device, int]:
    """(the --device, the CPU threads in use): resolve_device(args.device), then
    configure_threads(args.threads, device)."""
    device = resolve_device(args.device)
    return device, configure_threads(args.threads, device)


class Clock:
    """Wall-clock seconds of a benchmark run (time.perf_counter from construction), and its
    --budget-s (None: no budget)."""

    def __init__(self, budget_s: float | None = None):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def seconds(self) -> float:
        """elapsed() rounded to 0.1 s, as the result files record it."""
        return round(self.elapsed(), 1)

    def over_budget(self) -> bool:
        """True once more than budget_s seconds have passed: start no new case."""
        return self.budget_s is not None and self.elapsed() > self.budget_s


def configure_threads(threads: int | None, device: torch.device) -> int:
    """Set torch's CPU threads for a CPU benchmark and return the count in use.

    threads None: torch's default, except on an oversubscribed machine (1-minute load average
    above the core count), where 1 thread is used: a multi-threaded op waits at every parallel
    barrier for a descheduled thread, which makes small ops many times slower and noisy.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive int, got {threads}")
        torch.set_num_threads(threads)
    elif device.type == "cpu" and hasattr(os, "getloadavg") and \
            os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: timing with 1 "
              "CPU thread (pass --threads to override)")
        torch.set_num_threads(1)
    return torch.get_num_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call; `median` is what the benchmarks report."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed calls: the run-to-run noise."""
        return (max(self.times) - min(self.times)) / self.median if self.median > 0 else 0.0


def time_fn(fn, device: torch.device, warmup: int = 2, repeats: int = 5) -> Timing:
    """Time `fn()` as described in the module docstring."""
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return Timing(tuple(start.elapsed_time(end) / 1e3 for start, end in events))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(tuple(times))


def time_interleaved(fns, device: torch.device, repeats: int = 3,
                     warmup: tuple[int, ...] | None = None) -> list[Timing]:
    """Time several callables round-robin: repeat k times fns[0], fns[1], … in turn.

    Calls of different functions are adjacent in time, so ratios taken per round
    (`ratio_median`) cancel slow drifts of machine load. warmup[i]: untimed calls of fns[i]
    first (default 1 each).
    """
    warmup = (1,) * len(fns) if warmup is None else tuple(warmup)
    if len(warmup) != len(fns):
        raise ValueError(f"warmup must give one count per function ({len(fns)}), got {warmup}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    for fn, n in zip(fns, warmup):
        for _ in range(n):
            fn()
    rounds = [[time_fn(fn, device, warmup=0, repeats=1).times[0] for fn in fns]
              for _ in range(repeats)]
    return [Timing(tuple(r[i] for r in rounds)) for i in range(len(fns))]


def ratio_median(num: Timing, den: Timing) -> float:
    """Median over rounds of num.times[k] / den.times[k] (timings from one time_interleaved)."""
    if len(num.times) != len(den.times):
        raise ValueError(f"timings of different lengths: {len(num.times)} and {len(den.times)}")
    return statistics.median(a / b for a, b in zip(num.times, den.times))


def ratio_range(num: Timing, den: Timing) -> tuple[float, float]:
    """(min, max) over rounds of num.times[k] / den.times[k]: the interval around ratio_median."""
    if len(num.times) != len(den.times):
        raise ValueError(f"timings of different lengths: {len(num.times)} and {len(den.times)}")
    ratios = [a / b for a, b in zip(num.times, den.times)]
    return min(ratios), max(ratios)


def copy_bandwidth_gbps(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Measured device-to-device copy bandwidth in GB/s (1e9 bytes/s), 2·nbytes per copy."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=repeats).median
    return 2 * src.numel() * 4 / t / 1e9


def matmul_tflops(device: torch.device, n: int | None = None, dtype: torch.dtype | None = None,
                  repeats: int = 5) -> float:
    """Measured dense matmul rate in TFLOP/s (2·n³ FLOPs per n×n product)."""
    if n is None:
        n = 8192 if device.type == "cuda" else 512
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b), device, warmup=2, repeats=repeats).median
    return 2 * n ** 3 / t / 1e12


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: torch.device) -> dict:
    """What ran the benchmark: date, host, CPU/GPU, library versions, load, git commit."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": _git_commit(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if hasattr(os, "getloadavg"):
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["gpu_sm_count"] = props.multi_processor_count
    return info


EXIT_PARTIAL = 3  # exit status of a benchmark whose --budget-s left cases unmeasured


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write dict rows (atomically); columns are the union of keys in first-seen order
    (missing -> empty)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return write_text_atomic(path, buf.getvalue())


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _parse_value(text: str):
    """A CSV cell back to int / float where it is one (empty -> absent)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV written by write_csv, numbers parsed, empty cells left out; [] if the file
    does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _parse_value(v) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def write_json(path: Path, record: dict) -> Path:
    """Write `record` as indented JSON (atomically; non-JSON values via str)."""
    return write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


class Results:
    """The CSV (+ JSON) of one benchmark run, rewritten atomically after every case, so a run
    stopped at any point (timeout, kill) leaves files holding every case measured so far.

    `record` is the JSON's content; `json_rows` also puts the rows there; `complete` in the
    JSON is False until `finish()`. With `resume`, rows of an earlier run are read back from the
    CSV (numbers parsed; rows whose `error` starts with "skipped" are dropped so they are
    measured again) and `has(key)` tells which cases to leave out; `key(row)` names a case.
    """

    def __init__(self, csv_path: Path, json_path: Path | None, record: dict, key=None,
                 resume: bool = False, json_rows: bool = False):
        self.csv_path, self.json_path = Path(csv_path), json_path and Path(json_path)
        self.record, self.key, self.json_rows = record, key, json_rows
        self.rows: list[dict] = []
        if resume:
            self.rows = [r for r in read_csv(self.csv_path)
                         if not str(r.get("error", "")).startswith("skipped")]
        self.resumed = len(self.rows)
        self._done = {key(r) for r in self.rows} if key else set()

    def has(self, key) -> bool:
        return key in self._done

    def add(self, rows, flush: bool = True) -> None:
        rows = [rows] if isinstance(rows, dict) else list(rows)
        self.rows.extend(rows)
        if self.key:
            self._done.update(self.key(r) for r in rows)
        if flush:
            self.flush()

    def flush(self, complete: bool = False, **record) -> None:
        """Rewrite the CSV, then the JSON (record updated with `record`)."""
        self.record.update(record)
        write_csv(self.csv_path, self.rows)
        if self.json_path is not None:
            content = dict(self.record, complete=complete, rows_written=len(self.rows),
                           rows_resumed=self.resumed)
            if self.json_rows:
                content["rows"] = self.rows
            write_json(self.json_path, content)

    def finish(self, complete: bool = True, **record) -> None:
        self.flush(complete=complete, **record)


def gamma_values(step: float) -> list[float]:
    """Drop rates 0, step, 2·step, ... below 1 (step 0.05 gives the paper's 20 values)."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ValueError(f"--step must be a float in (0, 1), got {step!r}")
    count = math.ceil(1.0 / step - 1e-9)
    return [round(i * step, 10) for i in range(count)]


def heatmap(ax, values, gammas, title: str, fmt: str = "{:.2g}", cmap: str = "viridis",
            center: float | None = None):
    """Draw `values` [len(gammas) γ_strong rows, len(gammas) γ_weak cols] on `ax`.

    NaN cells (γ_strong > γ_weak, or not measured) are masked and drawn grey; the others carry
    their value as text when the grid is at most 20×20. `center`: a diverging colour scale whose
    midpoint is that value (e.g. 1 for a ratio).
    """
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.ma.masked_invalid(np.asarray(values, dtype=float))
    finite = data.compressed()
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    norm = None
    if center is not None and finite.size:
        norm = mcolors.TwoSlopeNorm(center, vmin=min(finite.min(), 0.5 * center),
                                    vmax=max(finite.max(), 1.5 * center))
    image = ax.imshow(data, origin="lower", cmap=colormap, norm=norm, aspect="equal")
    ticks = list(range(len(gammas)))
    every = max(1, len(gammas) // 10)
    labels = [f"{g:g}" for g in gammas]
    ax.set_xticks(ticks[::every], labels[::every], fontsize=7)
    ax.set_yticks(ticks[::every], labels[::every], fontsize=7)
    ax.set_xlabel("γ_weak")
    ax.set_ylabel("γ_strong")
    ax.set_title(title, fontsize=9)
    if len(gammas) <= 20:
        size = 7 if len(gammas) <= 10 else 4.5
        for i, j in zip(*np.nonzero(~np.ma.getmaskarray(data))):
            v = float(data[i, j])
            r, g, b, _ = colormap(image.norm(v))
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size, color=color)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_model(preset: str, ckpt: str | None, device: torch.device, dtype: torch.dtype):
    """RoutedDiT in eval mode: EMA weights of `ckpt` if given, else `preset` with random init."""
    from sgkernels import RoutedDiT, presets
    from sgkernels.model import from_checkpoint

    if ckpt:
        model = from_checkpoint(ckpt, ema=True, map_location=device)
    else:
        model = RoutedDiT(presets.get(preset))
    return model.to(device=device, dtype=dtype).eval()


def sampling_fn(model, guidance, batch: int, steps: int, device: torch.device,
                dtype: torch.dtype, packed: bool = True, seed: int = 0, **options):
    """A zero-argument callable running `steps` Euler steps of `sgkernels.sample` on `batch` images.

    Each call is a real sampling run (route scores drawn, branches in one packed forward or as
    separate forwards, guidance combination, solver update) from fixed noise and labels.
    `options`: further keyword arguments of `sample` (compile, cuda_graphs).
    """
    import sgkernels

    cfg = model.config
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    noise = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    labels = torch.randint(0, max(cfg.num_classes, 1), (batch,), generator=gen, device=device)

    def run():
        sgkernels.sample(model, noise, labels, steps=steps, guidance=guidance, generator=gen,
                         packed=packed, **options)
    return run
