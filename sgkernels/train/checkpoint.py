"""Checkpoints: dicts {"model", "ema", "opt", "args", "step"} written atomically.

args holds "model_config" (ModelConfig.to_dict()), "train" (the training arguments) and "rng"
(the torch CPU/CUDA, numpy and python RNG states at save time), all tensors or plain Python
values, so checkpoints load with torch.load(weights_only=True): model.checkpoint.read_checkpoint
reads and checks them (for sample, eval, --resume and --finetune alike).
A write goes to a temporary file in the target directory, is flushed and fsync'ed, then
os.replace'd onto the target name, and the directory entry is fsync'ed: a crash at any point
leaves either the old or the new file, never a torn one; a failed write (full disk: OSError
ENOSPC from the write, the flush or the fsync) removes the temporary file and raises OSError naming
the target. `latest.pt` is a hard link (atomically replaced) to the newest numbered checkpoint.
Every write goes through atomic_write (args.json too); remove_stale_temps deletes the temporary
files of a writer that was killed mid-write.
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TMP_SUFFIX = ".tmp"


def reason(e: OSError) -> str:
    """The OS's reason of an OSError ("No space left on device"), under our re-raises too."""
    while isinstance(e.__cause__, OSError):
        e = e.__cause__
    return e.strerror or str(e)


def os_error(e: OSError, message: str) -> OSError:
    """An OSError with e's errno (so the same subclass) and `message`."""
    return OSError(e.errno, message) if e.errno is not None else OSError(message)


class _Sink:
    """The file object handed to the writer: records the OSError of a failed write. torch.save
    reports one (e.g. ENOSPC on a full disk) as a RuntimeError about the stream position; the
    recorded error lets atomic_write raise the OS's error instead."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


def atomic_write(path, write) -> Path:
    """write(f) into a temporary file next to `path` (binary), flush, fsync, os.replace onto
    `path`, fsync the folder. On any failure the temporary file is removed and `path` keeps its
    previous content; a failed write, flush or fsync raises OSError (the OS's errno, e.g. ENOSPC)
    with a message naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                write(sink)
            except Exception as e:
                if sink.error is not None and sink.error is not e:
                    raise sink.error from e
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and str(path) not in str(e):
            raise os_error(e, f"writing {path}: {reason(e)} (the file keeps its previous "
                           "content; temporary file removed)") from e
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj, path) -> Path:
    """torch.save(obj) to `path` atomically (atomic_write)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files atomic_write / link_atomic left in `folder` when their process
    was killed mid-write (call only where no other process writes there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".")
             and (p.name.endswith(_TMP_SUFFIX) or p.name.endswith(".link"))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def link_atomic(src, dst) -> None:
    """Point `dst` at the file `src` (hard link, copy where links are unsupported), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:
            save_atomic(torch.load(src, map_location="cpu", weights_only=True), tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
