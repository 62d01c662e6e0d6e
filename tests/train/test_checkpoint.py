"""Atomic checkpoint writes: a failure or a kill mid-write leaves the previous file intact."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.runtime import files
from sgkernels.train import checkpoint as C


def _ckpt(step):
    return {"model": {"w": torch.full((64, 64), float(step))}, "ema": {}, "opt": {},
            "args": {"model_config": {}, "rng": C.rng_state()}, "step": step}


def test_roundtrip_loads_with_weights_only(tmp_path):
    path = files.save_atomic(_ckpt(3), tmp_path / "a.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.full((64, 64), 3.0))
    assert torch.load(path, weights_only=True)["step"] == 3


def test_rng_state_roundtrip():
    state = C.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    C.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_failure_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = files.save_atomic(_ckpt(1), tmp_path / "latest.pt")

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(files.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        files.save_atomic(_ckpt(2), path)
    assert read_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["latest.pt"]  # the temporary file was removed


def test_kill_mid_write_keeps_previous(tmp_path):
    path = tmp_path / "latest.pt"
    files.save_atomic(_ckpt(1), path)
    marker = tmp_path / "writing"
    child = textwrap.dedent(f"""
        import time, torch
        from sgkernels.runtime import files
        def slow_save(obj, f):
            f.write(b"PK partial")
            f.flush()
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        files.torch.save = slow_save
        files.save_atomic({{"model": {{}}, "ema": {{}}, "opt": {{}}, "args": {{}}, "step": 2}},
                      {str(path)!r})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", child], env=env)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "writer exited before reaching the write"
            assert time.time() < deadline, "writer never started writing"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_checkpoint(path)["step"] == 1


def test_link_atomic_points_latest_at_newest(tmp_path):
    a = files.save_atomic(_ckpt(1), tmp_path / "0000001.pt")
    b = files.save_atomic(_ckpt(2), tmp_path / "0000002.pt")
    files.link_atomic(a, tmp_path / "latest.pt")
    files.link_atomic(b, tmp_path / "latest.pt")
    assert read_checkpoint(tmp_path / "latest.pt")["step"] == 2
    assert read_checkpoint(a)["step"] == 1


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*none.pt"):
        read_checkpoint(tmp_path / "none.pt")
    torch.save({"model": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt' lacks keys \['ema', 'opt', 'args', 'step'\]"):
        read_checkpoint(tmp_path / "bad.pt")
