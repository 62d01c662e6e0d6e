"""Per-rank sample files: uint8 [N, H, W, C] images (runtime.images.to_uint8; key arr_0),
labels (arr_1) and global indices (arr_2) of each rank, merged by global index."""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
