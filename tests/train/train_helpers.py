"""Tiny routed models, run arguments and multi-process launches shared by the training tests."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sgkernels.model import ModelConfig, RoutedDiT
from sgkernels.train import Trainer, TrainArgs


def tiny_config(**changes) -> ModelConfig:
    base = ModelConfig(input_size=8, patch_size=2, in_channels=1, num_classes=10, depth=2, dim=32,
                       heads=2, flavour="sit", routes=((1, 1, 0.5),))
    return base.replace(**changes)


def tiny_maskdit_config() -> ModelConfig:
    return tiny_config(routes=(), mask_ratio=0.5, decoder_depth=1, decoder_dim=32, decoder_heads=2)


def tiny_model(config: ModelConfig | None = None, seed: int = 0) -> RoutedDiT:
    torch.manual_seed(seed)
    return RoutedDiT(config or tiny_config())


def tiny_args(out, **changes) -> TrainArgs:
    base = {"model": None, "finetune": None, "data": "digits", "steps": 4, "batch": 8, "lr": 1e-3,
            "ema_decay": 0.9, "ckpt_every": 0, "sample_every": 0, "log_every": 1,
            "sample_count": 10, "sample_steps": 2, "out": str(out), "device": "cpu",
            "progress": False, "seed": 0}
    base.update(changes)
    if base["model"] is None and base["finetune"] is None:
        base["model"] = "custom"
    return TrainArgs(**base)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ROOT = Path(__file__).resolve().parents[2]


def close_states(a: dict, b: dict, rtol=1e-4, atol=1e-6) -> None:
    """Same keys, tensors equal to fp32 tolerance (k-process vs 1-process runs)."""
    assert a.keys() == b.keys()
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], rtol=rtol, atol=atol, msg=k)


def assert_same_training_state(one: dict, two: dict) -> None:
    """Two checkpoints after the same steps hold the same model, EMA and AdamW moments (fp32
    tolerance), and gradients flowed (non-zero moments), so equal moments mean equal gradients."""
    assert one["step"] == two["step"]
    assert sum(s["exp_avg"].abs().sum() for s in one["opt"]["state"].values()) > 0
    close_states(one["model"], two["model"])
    close_states(one["ema"], two["ema"])
    for k, state in one["opt"]["state"].items():
        close_states(state, two["opt"]["state"][k])


def subprocess_env() -> dict:
    """The environment of a child process: one thread, the source tree importable."""
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a process group's store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args, command: str = "train", script: Path | None = None) -> None:
    """`python -m sgkernels COMMAND ARGS` (or `python SCRIPT ARGS`) under torchrun with `nproc`
    CPU processes (gloo)."""
    port = free_port()
    env = subprocess_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port),
           *(["-m", "sgkernels", command] if script is None else [str(script)]), *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def nan_batch_at(bad_step: int):
    """A Trainer.batch replacement whose image has a NaN pixel at 0-based step `bad_step`."""
    batch = Trainer.batch

    def poisoned(self, step):
        x, y, text, draws = batch(self, step)
        if step == bad_step:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x, y, text, draws
    return poisoned
