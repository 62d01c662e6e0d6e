"""Synthetic image sets for the eval tests."""
import numpy as np


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


def random_classifier(seed: int = 0):
    """ClassifierFeatures over an untrained FashionCNN with seeded weights (a fixed feature map)."""
    import torch

    from sgkernels.eval.classifier import ClassifierFeatures, FashionCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ClassifierFeatures(FashionCNN())


def save_stand_in_inception(path, dim: int = 2048) -> str:
    """A TorchScript file with Inception's contract ([B, 3, 299, 299] -> [B, dim]), cheap."""
    import warnings

    import torch

    class Stand(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 13 * 13, dim)

        def forward(self, x):
            assert x.shape[1:] == (3, 299, 299)
            return torch.relu(self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 13).flatten(1)))

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.manual_seed(0)
        torch.jit.script(Stand()).save(str(path))
    return str(path)
