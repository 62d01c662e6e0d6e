import numpy as np
import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every eval test gets an empty cache of its own (never the user's)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SGKERNELS_CACHE", str(path))
    return path


def blobs(n: int, seed: int = 0, size: int = 28, channels: int = 1) -> np.ndarray:
    """Synthetic uint8 images [n, size, size, channels]: a bright rectangle of random extent on a
    dark background plus noise, so feature sets have spread but a common structure."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 40, (n, size, size, channels)).astype(np.int64)
    for img in out:
        top, left = rng.integers(2, size // 2, 2)
        h, w = rng.integers(size // 4, size // 2, 2)
        img[top:top + h, left:left + w] += rng.integers(120, 210)
    return np.clip(out, 0, 255).astype(np.uint8)


def add_noise(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float64) + rng.normal(0.0, sigma, images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
