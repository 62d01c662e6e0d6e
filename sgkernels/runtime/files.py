"""Atomic file writes: a crash or a failed write leaves the old file or the new one, never a torn
one.

A write goes to a temporary file in the target's folder, is flushed and fsync'ed, then
os.replace'd onto the target name, and the folder entry is fsync'ed. A failed write (full disk:
OSError ENOSPC from the write, the flush or the fsync) removes the temporary file and raises
OSError naming the target. remove_stale_temps deletes the temporary files of a writer that was
killed mid-write; link_atomic points a name at an existing file (hard link) the same way.
"""
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

_TMP_SUFFIX = ".tmp"
_LINK_SUFFIX = ".link"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    recorded error lets atomic_write raise the OS's error instead. Every other attribute is the
    file's (np.savez takes it for a file object)."""

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

    def __getattr__(self, name):
        return getattr(self.f, name)


def atomic_write(path, write) -> Path:
    """write(f) into a temporary file next to `path` (binary), flush, fsync, os.replace onto
    `path`, fsync the folder (created if missing). On any failure the temporary file is removed
    and `path` keeps its previous content; a failed write, flush or fsync raises OSError (the
    OS's errno, e.g. ENOSPC) with a message naming `path`."""
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


def write_text_atomic(path, text: str) -> Path:
    """`text` (UTF-8) to `path` atomically (atomic_write)."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_atomic(obj, path) -> Path:
    """torch.save(obj) to `path` atomically (atomic_write)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def savez_atomic(path, *arrays, **named) -> Path:
    """np.savez(path, *arrays, **named) atomically (atomic_write); `path` is used as given (no
    .npz appended)."""
    return atomic_write(path, lambda f: np.savez(f, *arrays, **named))


def publish_dir(tmp, final) -> Path:
    """Rename the completely written directory `tmp` to `final` (replacing an old `final`) and
    fsync the parent: readers see the old directory or the whole new one."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files atomic_write / link_atomic left in `folder` when their process
    was killed mid-write (call only where no other process writes there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".")
             and (p.name.endswith(_TMP_SUFFIX) or p.name.endswith(_LINK_SUFFIX))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def link_atomic(src, dst) -> None:
    """Point `dst` at the torch.save file `src` (hard link, a copy where links are unsupported),
    atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}{_LINK_SUFFIX}")
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
