"""The user cache: $SGKERNELS_CACHE, else ~/.cache/sgkernels. Holds the trained Fashion-MNIST
classifier and reference feature sets (.npz of features, mu, sigma keyed by a hash of the image
set and the feature extractor). Files are written atomically (runtime.files), so a crash never
leaves a half-written entry."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from sgkernels.runtime.files import savez_atomic


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


def feature_stats(extractor, images, digest: str) -> dict[str, np.ndarray]:
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
    savez_atomic(path, **out)
    return out
