"""Datasets by name: `load_dataset(name, size, path, channels, latent_scale)` for the trainer's
`--data` / `--data-path` (one of DATASETS). The image readers are images.py, the caption
datasets (num_classes 0; `get` returns caption levels instead of labels) captions.py."""
import os

from .captions import FashionMNISTCaptions, JsonlCaptions
from .images import FASHION_MNIST_DIR, ImageFolder, digits, fashion_mnist, latents

CAPTION_DATASETS = ("fashion-mnist-captions", "captions-jsonl")     # captions.py
DATASETS = ("fashion-mnist", "digits", "folder", "latents", *CAPTION_DATASETS)


def load_dataset(name: str, size: int, path: str | None = None, channels: int = 1,
                 latent_scale: float = 1.0):
    """Build a dataset by name (one of DATASETS); `path` is the folder for folder/latents, the
    JSONL file for captions-jsonl. Caption datasets' `get` returns caption levels, not labels."""
    if name in ("fashion-mnist", "fashion-mnist-captions"):
        data = fashion_mnist(size, root=path or os.environ.get("SGKERNELS_FMNIST",
                                                               FASHION_MNIST_DIR))
        return data if name == "fashion-mnist" else FashionMNISTCaptions(data)
    if name == "captions-jsonl":
        if not path:
            raise ValueError("path: the 'captions-jsonl' dataset needs --data-path (the JSONL file)")
        return JsonlCaptions(path, size, channels)
    if name == "digits":
        return digits(size)
    if name in ("folder", "latents"):
        if not path:
            raise ValueError(f"path: the {name!r} dataset needs --data-path")
        return ImageFolder(path, size, channels) if name == "folder" else latents(path, latent_scale)
    raise ValueError(f"name: expected one of {DATASETS}, got {name!r}")
