"""Rank-0 training log: tqdm bar (steps/s; loss and images/s of the last row), JSONL and CSV
rows, a loss-curve PNG.

Each row: step, loss (mean over the finite steps since the last row, averaged over ranks), lr,
steps_per_s, images_per_s (global batch / step time), elapsed_s, skipped (non-finite steps
skipped so far, --on-nonfinite skip). On resume the files are appended to, so one log covers the
whole run (a CSV begun with fewer columns keeps its header).
"""
import csv
import json
import time
from pathlib import Path

FIELDS = ("step", "loss", "lr", "steps_per_s", "images_per_s", "elapsed_s", "skipped")


class TrainLog:
    def __init__(self, out: Path, total_steps: int, start_step: int, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.jsonl = Path(out) / "log.jsonl"
        self.csv = Path(out) / "log.csv"
        self.bar = None
        self._t0 = self._tlast = time.perf_counter()
        self._slast = start_step
        if not enabled:
            return
        self.csv_fields = FIELDS
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                self.csv_fields = tuple(next(csv.reader(f), FIELDS))
        else:
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(FIELDS)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def row(self, step: int, loss: float, lr: float, global_batch: int, skipped: int = 0) -> dict:
        now = time.perf_counter()
        rate = (step - self._slast) / max(now - self._tlast, 1e-9)
        self._tlast, self._slast = now, step
        rec = {"step": step, "loss": loss, "lr": lr, "steps_per_s": rate,
               "images_per_s": rate * global_batch, "elapsed_s": now - self._t0,
               "skipped": skipped}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rec['images_per_s']:.0f}")
        if self.enabled:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
            with open(self.csv, "a", newline="") as f:
                csv.writer(f).writerow([rec.get(k, "") for k in self.csv_fields])
        return rec

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_log(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss(jsonl, png, smooth: int = 20) -> Path:
    """Loss against step (raw and a moving average of `smooth` rows) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = read_log(jsonl)
    if not rows:
        raise ValueError(f"jsonl: {jsonl} holds no log rows")
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    if len(loss) >= smooth > 1:
        avg = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[smooth - 1:], avg, lw=1.5, label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return Path(png)
