"""Data parallel: a 2-process torchrun (gloo, CPU) step equals the 1-process step on the
combined batch, because both draw the same per-sample noise, times, dropout and routes."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.train.cli import main
from sgkernels.train.logger import read_log

ARGS = ["--model", "Tiny/2", "--set", "input_size=8", "patch_size=2", "--data", "digits",
        "--steps", "2", "--batch", "8", "--lr", "1e-3", "--label-dropout", "0.5",
        "--ckpt-every", "0", "--sample-every", "0", "--log-every", "1", "--device", "cpu",
        "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], rtol=1e-4, atol=1e-6, msg=k)


MASKDIT_DENSE = ["--set", "routes=[]", "mask_ratio=0.5", "decoder_depth=1", "decoder_dim=32",
                 "decoder_heads=1", "--routing", "off"]


@pytest.mark.parametrize("extra", [
    [], pytest.param(MASKDIT_DENSE, marks=pytest.mark.slow, id="maskdit-dense")])
def test_two_process_step_equals_one_process_step(tmp_path, extra):
    args = ARGS + extra
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "sgkernels", "train", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    one = read_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")
    two = read_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert two["args"]["world_size"] == 2 and one["args"]["world_size"] == 1
    assert one["step"] == two["step"] == 2
    # gradients flowed (Adam moments are non-zero), so equal moments mean equal gradients
    assert sum(s["exp_avg"].abs().sum() for s in one["opt"]["state"].values()) > 0
    _close(one["model"], two["model"])
    _close(one["ema"], two["ema"])
    for k, state in one["opt"]["state"].items():
        _close(state, two["opt"]["state"][k])
    losses = [[r["loss"] for r in read_log(tmp_path / d / "log.jsonl")] for d in ("one", "two")]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5,
                               atol=0)
