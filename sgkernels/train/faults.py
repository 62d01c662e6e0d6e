"""Training under faults: non-finite steps and preemption signals (SIGTERM / SIGINT).

Non-finite loss or gradient (NonFiniteGuard)
    After backward the trainer computes the global gradient norm ||g|| (the norm that grad
    clipping needs anyway: clip_grad_norm_ is get_total_norm + clip_grads_with_norm_; with
    --grad-clip 0 it is one extra foreach-norm pass over the gradients) and hands the detached loss
    and ||g|| of every step to the guard, which keeps them on the device. A step is non-finite
    when loss + ||g|| is NaN or inf (a NaN or inf anywhere in the gradients makes ||g|| so).

    --on-nonfinite stop (default): nothing is read back per step. The guard reads its window of
        per-step values (one small device-to-host copy) only where the loop synchronises anyway:
        at a log row (which reads the mean loss), before writing a checkpoint or a sample grid,
        and at the end. At the first non-finite step it raises FloatingPointError naming that
        step; no checkpoint is written after it, so the last good checkpoint stays (the steps
        between that checkpoint and the check are lost, and at most log_every steps run on
        non-finite weights before the check).
    --on-nonfinite skip: the update of a non-finite step is skipped on the device, with no host
        read either: found_inf = !isfinite(loss + ||g||) (max over ranks under DDP, a one-element
        all_reduce on the device) goes to fused AdamW, whose kernel leaves weights, moments and step
        count unchanged when it is 1 (the mechanism torch.amp.GradScaler uses), and zeroes the EMA
        weight. The step counter (and so the data position) still advances: the bad batch is not
        revisited. Skipped steps are counted at the log rows (log.jsonl "skipped", a message naming
        them) and kept in checkpoints (args["skipped_steps"]).
    Without non-finite steps both modes give bit-identical runs, so a run stopped by a NaN can be
    continued with `--resume --on-nonfinite skip` from its last good checkpoint.

Preemption (StopSignals)
    While the loop runs, SIGTERM and SIGINT only set a flag (repeats are ignored: SIGKILL or
    SIGQUIT abort at once). At every step boundary the ranks agree on it (trainer._stop_requests:
    one all_reduce MAX of [signal, time limit] on a CPU gloo group under DDP, so all ranks stop
    after the same step and no device sync is added; nothing to agree on in a single process);
    rank 0 writes a checkpoint, the run returns {"stopped": "SIGTERM", ...} without sample grid
    or loss plot, and `python -m sgkernels train` prints one line and exits with status 0.
    `--resume` then continues exactly.
"""
import math
import signal
import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from sgkernels.runtime.device import DistInfo

from . import distributed as D

SIGNALS = (signal.SIGTERM, signal.SIGINT)
ON_NONFINITE = ("stop", "skip")


class StopSignals:
    """Context manager: SIGTERM / SIGINT set `signum` (the first one) instead of ending the
    process. Handlers are installed only in the main thread and restored on exit."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:  # only sets a flag: safe anywhere in the loop
        if not self.signum:
            self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@dataclass
class Window:
    """What one read of the guard's window found."""
    mean_loss: float                  # mean loss of the finite steps (nan if none), this rank
    bad: list[int] = field(default_factory=list)  # 1-based numbers of the non-finite steps
    first: tuple | None = None        # stop mode: (step, loss (mean over ranks), grad norm)
    #                                   of the first bad step, the same on every rank


class NonFiniteGuard:
    """Per-step loss and gradient norm on the device; checked at the loop's sync points."""

    def __init__(self, mode: str, info: DistInfo, start_step: int, skipped: int = 0):
        if mode not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {mode!r}")
        self.mode, self.info = mode, info
        self.start = start_step             # 0-based index of the window's first step
        self.losses, self.norms, self.flags = [], [], []
        self.skipped = skipped              # skipped steps before the window (host int)
        self.pending = 0                    # skipped steps in the window at the last read

    def record(self, loss: torch.Tensor, norm: torch.Tensor) -> torch.Tensor | None:
        """Keep a step's detached loss and grad norm. Skip mode: returns found_inf, a float 0-dim
        tensor on the device (1.0: skip this update), the same on every rank. No host read."""
        self.losses.append(loss.detach())
        self.norms.append(norm.detach())
        if self.mode != "skip":
            return None
        found_inf = torch.isfinite(loss.detach().float() + norm.float()).logical_not().float()
        if self.info.enabled:  # a rank-local inf loss must skip the step on every rank
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
        self.flags.append(found_inf)
        return found_inf

    def read(self, flush: bool) -> Window:
        """Read the window (one device-to-host copy; call where the loop syncs anyway). Stop
        mode: `first` is the first non-finite step, agreed over ranks. flush: start a new window
        (at log rows)."""
        if not self.losses:
            return Window(math.nan)
        losses = torch.stack(self.losses).float()
        norms = torch.stack(self.norms).float()
        if self.mode == "skip":
            ok = torch.stack(self.flags) == 0
        else:
            ok = torch.isfinite(losses + norms)
        mean = torch.where(ok, losses, 0.0).sum() / ok.sum()
        host = torch.cat([mean[None].double(), ok.double(), losses.double(), norms.double()])
        host = host.cpu().tolist()
        n = len(self.losses)
        oks, loss_v, norm_v = host[1:1 + n], host[1 + n:1 + 2 * n], host[1 + 2 * n:]
        bad = [self.start + i + 1 for i in range(n) if not oks[i]]
        window = Window(host[0], bad)
        if self.mode == "stop":
            local = bad[0] if bad else 2**62
            first = -D.max_ints([-local], self.info)[0]
            if first < 2**62:  # the loss averaged over ranks, as in the log rows
                i = first - self.start - 1
                window.first = (first, D.mean_scalar(loss_v[i], self.info), norm_v[i])
        self.pending = len(bad) if self.mode == "skip" else 0
        if flush:
            self.skipped += self.pending
            self.pending = 0
            self.start += n
            self.losses, self.norms, self.flags = [], [], []
        return window

    @property
    def skipped_total(self) -> int:
        """Skipped steps up to the last read."""
        return self.skipped + self.pending


def nonfinite_message(step: int, loss: float, norm: float, last_ckpt) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient"
    where = (f"the last good checkpoint is {last_ckpt[0]} (step {last_ckpt[1]})" if last_ckpt
             else "no checkpoint was written before it")
    return (f"non-finite {what} at step {step} (loss {loss:g}, grad norm {norm:g}): training "
            f"stopped without writing a checkpoint of this state; {where}. Continue from it with "
            "--resume (add --on-nonfinite skip to skip such steps, or lower --lr / set "
            "--grad-clip)")
