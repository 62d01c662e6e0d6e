"""Checkpoints: dicts {"model", "ema", "opt", "args", "step"} written atomically.

args holds "model_config" (ModelConfig.to_dict()), "train" (the training arguments) and "rng"
(the torch CPU/CUDA, numpy and python RNG states at save time), all tensors or plain Python
values, so checkpoints load with torch.load(weights_only=True) (model.from_checkpoint does).
A write goes to a temporary file in the target directory, is flushed and fsync'ed, then
os.replace'd onto the target name, and the directory entry is fsync'ed: a crash at any point
leaves either the old or the new file, never a torn one. `latest.pt` is a hard link (atomically replaced) to the newest numbered checkpoint.
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

KEYS = ("model", "ema", "opt", "args", "step")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj, path) -> Path:
    """torch.save(obj) to `path` atomically (temp file in the same dir + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def link_atomic(src, dst) -> None:
    """Point `dst` at the file `src` (hard link, copy where links are unsupported), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        save_atomic(torch.load(src, map_location="cpu", weights_only=True), tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def rng_state() -> dict:
    """RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a training checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(KEYS)
    if missing:
        raise ValueError(f"path: {path} is not a training checkpoint (missing keys {missing})")
    return ckpt
