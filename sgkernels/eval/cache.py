"""The user cache: $SGKERNELS_CACHE, else ~/.cache/sgkernels. Holds the trained Fashion-MNIST
classifier and reference feature sets (.npz of features, mu, sigma keyed by a hash of the image
set and the feature extractor). Files are written to a temporary name and renamed, so a crash
never leaves a half-written entry."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir(sub: str = "") -> Path:
    root = os.environ.get("SGKERNELS_CACHE") or Path.home() / ".cache" / "sgkernels"
    path = Path(root) / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) for a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cached_features(extractor, images, digest: str) -> dict[str, np.ndarray]:
    """{"features" float32 [N, D], "mu", "sigma" float64} of an image set, cached under
    features/<extractor.name>-<sha1(extractor.key, digest)>.npz."""
    from .frechet import gaussian_stats

    key = hashlib.sha1(f"{extractor.key}|{digest}".encode()).hexdigest()[:20]
    path = cache_dir("features") / f"{extractor.name}-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {name: f[name] for name in ("features", "mu", "sigma")}
    feats = extractor(images)
    mu, sigma = gaussian_stats(feats)
    out = {"features": feats.astype(np.float32), "mu": mu, "sigma": sigma}

    def save(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **out)

    atomic_write(path, save)
    return out
