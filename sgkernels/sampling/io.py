"""Writing samples: model-space images in [-1, 1] -> uint8 [N, H, W, C] (the DiT/ADM `.npz`
layout, key arr_0; labels in arr_1) and a PNG grid; per-rank parts merged by global index."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

IMAGE_CHANNELS = (1, 3)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 via round((x + 1) · 127.5), clamped."""
    if images.dim() != 4 or images.shape[1] not in IMAGE_CHANNELS:
        raise ValueError(f"images must be [N, C, H, W] with C in {IMAGE_CHANNELS}, got "
                         f"{tuple(images.shape)}")
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path, pad: int = 2) -> Path:
    """Tile uint8 images [N, H, W, C] row-major in a near-square grid, white padding."""
    from PIL import Image

    n, h, w, c = images.shape
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = img
    path = Path(path)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)
    return path


def part_path(out: Path, rank: int) -> Path:
    return Path(out) / f"samples_part{rank:05d}.npz"


def merge_parts(out: Path, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read every rank's part (arr_0 samples, arr_1 labels, arr_2 global indices), delete the
    parts, and return samples and labels in global index order."""
    arrays, labels, index = [], [], []
    for rank in range(world_size):
        path = part_path(out, rank)
        if not path.exists():               # a rank without batches
            continue
        with np.load(path) as part:
            arrays.append(part["arr_0"])
            labels.append(part["arr_1"])
            index.append(part["arr_2"])
    order = np.argsort(np.concatenate(index), kind="stable")
    merged = np.concatenate(arrays)[order], np.concatenate(labels)[order]
    for rank in range(world_size):
        part_path(out, rank).unlink(missing_ok=True)
    return merged
