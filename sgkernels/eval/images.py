"""Image sets for evaluation: generated samples (.npz or a PNG folder) and references.

Images are uint8 [N, H, W, C] with C in (1, 3), the layout `python -m sgkernels sample` writes
(arr_0 images, arr_1 labels). A PNG folder is read recursively in sorted path order; when every
image sits in a sub-folder named by an integer, that integer is its label. References by name
are the Fashion-MNIST splits from the Debian package (`apt-get install -y
dataset-fashion-mnist`; $SGKERNELS_FMNIST overrides the folder); any other reference is a path
read like the samples. ADM reference batches (the .npz files of ADM's evaluator) are read too:
arr_0 uint8 images [N, H, W, 3] (arr_1 labels when labelled) and the Inception pool3
statistics mu [2048], sigma [2048, 2048] of those images, which `evaluate` uses for fid instead
of recomputing them (mu_s / sigma_s, ADM's spatial features for sFID, are not used); a file with
mu and sigma but no arr_0 serves fid alone.

Matching a set to a 28x28 feature extractor undoes the trainer's padding (32 = 28 + 2·2 pixels
of background) by a centre crop; other sizes are resized bilinearly (antialiased when shrinking)
and re-quantized to uint8. Colour is turned into grey by ITU-R 601 luma (as PIL's "L").
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import FASHION_MNIST_DIR, IMAGE_SUFFIXES, fashion_mnist

REFERENCES = {"fashion-mnist-test": "test", "fashion-mnist-train": "train"}
LUMA = np.array([0.299, 0.587, 0.114])


def check_images(images, name: str = "images") -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{name}: expected a uint8 numpy array, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{name}: expected [N, H, W, C] with N > 0 and C in (1, 3), got "
                         f"{images.shape}")
    return images


@dataclass
class ImageSet:
    """uint8 images [N, H, W, C], optional int64 labels [N], and where they came from; `stats`
    holds precomputed {"mu", "sigma"} of the images by feature space ("inception": an ADM
    reference batch), and then images may be None (a statistics-only reference)."""
    images: np.ndarray | None
    labels: np.ndarray | None
    name: str
    stats: dict[str, dict[str, np.ndarray]] | None = None

    def __post_init__(self):
        if self.images is None:
            if not self.stats:
                raise ValueError(f"{self.name}: an image set needs images or precomputed stats")
            return
        check_images(self.images, "images")
        if self.labels is not None:
            labels = np.asarray(self.labels).reshape(-1)
            if not (np.issubdtype(labels.dtype, np.integer) or
                    (np.issubdtype(labels.dtype, np.floating) and
                     np.array_equal(labels, np.round(labels)))):
                raise ValueError(f"labels ({self.name}): expected integer class labels, got "
                                 f"{labels.dtype} values such as {labels[:3].tolist()}")
            self.labels = labels.astype(np.int64)
            if self.labels.shape[0] != self.images.shape[0]:
                raise ValueError(f"labels: expected {self.images.shape[0]} labels, got "
                                 f"{self.labels.shape[0]}")

    def __len__(self):
        """Number of images (0 for a statistics-only set)."""
        return 0 if self.images is None else self.images.shape[0]

    def head(self, num: int | None) -> ImageSet:
        """The first `num` images (all when None; precomputed stats, which describe all of
        them, are dropped); asking for more than there are is an error."""
        if num is None:
            return self
        if self.images is None:
            raise ValueError(f"num: {self.name} holds precomputed statistics only, no images to "
                             f"take the first {num} of")
        if num < 1 or num > len(self):
            raise ValueError(f"num: expected 1..{len(self)} for {self.name}, got {num}")
        labels = None if self.labels is None else self.labels[:num]
        return ImageSet(self.images[:num], labels, self.name)

    def digest(self) -> str:
        """sha1 of the shape and pixels (labels excluded): the cache key of a feature set."""
        h = hashlib.sha1(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        return h.hexdigest()


def _adm_stats(f, path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{"inception": {"mu", "sigma"}} from an ADM batch's mu and sigma (float64), or None."""
    if "mu" not in f or "sigma" not in f:
        return None
    mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"path: {path}: expected ADM Inception statistics mu [D] and sigma "
                         f"[D, D], got {mu.shape} and {sigma.shape}")
    return {"inception": {"mu": mu, "sigma": sigma}}


def _read_npz(path: Path) -> ImageSet:
    with np.load(path) as f:
        stats = _adm_stats(f, path)
        if "arr_0" not in f and stats is None:
            raise ValueError(f"path: {path} has no arr_0 (expected uint8 images [N, H, W, C]) "
                             f"and no mu / sigma (an ADM batch's Inception statistics)")
        images = f["arr_0"] if "arr_0" in f else None
        labels = f.get("arr_1") if images is not None else None
    if images is not None:
        if images.ndim == 3:
            images = images[..., None]
        check_images(images, f"{path}:arr_0")
    return ImageSet(images, labels, path.name, stats)


def _read_folder(root: Path) -> ImageSet:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"path: no images ({'/'.join(IMAGE_SUFFIXES)}) under {root}")
    arrays, mode = [], None
    for f in files:
        with Image.open(f) as im:
            mode = mode or ("L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
            arr = np.asarray(im.convert(mode))
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(f"path: {f} is {arr.shape}, the first image is {arrays[0].shape}")
        arrays.append(arr)
    images = np.stack(arrays)
    parents = [f.parent.relative_to(root).parts for f in files]
    numbered = all(len(p) == 1 and p[0].lstrip("-").isdigit() for p in parents)
    labels = np.array([int(p[0]) for p in parents]) if numbered else None
    return ImageSet(images[..., None] if images.ndim == 3 else images, labels, root.name)


def load_images(path) -> ImageSet:
    """Samples from an .npz (arr_0 uint8 [N, H, W, C], optional arr_1 labels, ADM's mu / sigma)
    or a PNG folder."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist (expected an .npz or a folder)")
    if path.suffix != ".npz":
        raise ValueError(f"path: expected an .npz file or a folder of images, got {path}")
    return _read_npz(path)


def load_reference(spec: str, arg: str = "ref") -> ImageSet:
    """A named reference (one of REFERENCES) or a path read by `load_images`; `arg` names the
    argument in error messages."""
    if spec in REFERENCES:
        root = os.environ.get("SGKERNELS_FMNIST", FASHION_MNIST_DIR)
        data = fashion_mnist(28, split=REFERENCES[spec], root=root)
        u8 = ((data.x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return ImageSet(u8, data.y.numpy(), spec)
    if not Path(spec).exists():
        raise ValueError(f"{arg}: expected one of {sorted(REFERENCES)} or an existing .npz or "
                         f"image folder, got {spec!r}")
    return load_images(spec)


def to_gray(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] -> [N, H, W, 1] by luma 0.299 R + 0.587 G + 0.114 B (grey passes through)."""
    if check_images(images).shape[-1] == 1:
        return images
    y = images.astype(np.float64) @ LUMA
    return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]


def fit_to(images: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an even margin (the trainer's padding) or resize [N, H, W, C] to size x size."""
    _, h, w, _ = check_images(images).shape
    if (h, w) == (size, size):
        return images
    if h == w and size < h < 2 * size and (h - size) % 2 == 0:
        m = (h - size) // 2
        return images[:, m:m + size, m:m + size]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=size < max(h, w))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
