"""Seeded, chunked and cached sampling for the reproduction.

Every method sees the same inputs for sample i of a split: noise from its own generator seeded
`SPLIT_SEEDS[split] · 10⁷ + i` (so the sweep and final splits never share a seed), label i mod 10
(balanced classes). Samples are produced and cached in chunks of `CHUNK` images,
`<folder>/<start>-<stop>.npz` (arr_0 uint8 [n, H, W, C], arr_1 labels); the token selections of a
chunk come from a generator seeded by (split, start). A chunk already on disk is reused, so an
interrupted stage resumes at the first missing chunk and a larger N reuses the smaller run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sgkernels import sample
from sgkernels.runtime.files import savez_atomic
from sgkernels.runtime.images import to_uint8

CHUNK = 250
SPLIT_SEEDS = {"sweep": 1, "final": 2}
SEED_STRIDE = 10_000_000
NUM_CLASSES = 10


def inputs(split: str, start: int, stop: int, config, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise [n, C, H, W] and labels [n] of samples start..stop-1 of `split`."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    if not 0 <= start < stop <= SEED_STRIDE:
        raise ValueError(f"need 0 <= start < stop <= {SEED_STRIDE}, got {start}, {stop}")
    shape = (config.in_channels, config.input_size, config.input_size)
    noise = torch.stack([
        torch.randn(shape, generator=torch.Generator().manual_seed(
            SPLIT_SEEDS[split] * SEED_STRIDE + i)) for i in range(start, stop)])
    labels = torch.arange(start, stop, dtype=torch.int64) % NUM_CLASSES
    return noise.to(device), labels.to(device)


def generate(model, guidance, split: str, num: int, folder: Path, steps: int,
             log=print) -> tuple[np.ndarray, np.ndarray]:
    """uint8 samples [num, H, W, C] and labels [num] of `guidance` on `model`, chunk-cached."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    images, labels = [], []
    for start in range(0, num, CHUNK):
        stop = min(start + CHUNK, num)
        path = folder / f"{start:07d}-{stop:07d}.npz"
        if not path.exists():
            noise, y = inputs(split, start, stop, model.config, device)
            gen = torch.Generator(device).manual_seed(SPLIT_SEEDS[split] * SEED_STRIDE + start)
            x = sample(model, noise, y, steps=steps, guidance=guidance, generator=gen)
            savez_atomic(path, to_uint8(x), y.cpu().numpy())
            log(f"  {folder.name}: samples {start}..{stop - 1}")
        with np.load(path) as data:
            images.append(data["arr_0"])
            labels.append(data["arr_1"])
    return np.concatenate(images), np.concatenate(labels)
