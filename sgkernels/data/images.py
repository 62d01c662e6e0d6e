"""Image datasets: Fashion-MNIST, sklearn digits, an image folder, precomputed latents.

Every dataset exposes `len(ds)`, `ds.num_classes`, `ds.shape` ([C, H, W] of one sample after
fitting to the model size) and `ds.get(indices) -> (x [B, C, H, W] float32, y [B] int64)`.
Pixel data is scaled to [-1, 1]; latents are returned as stored (times `scale`). The caption
datasets built on these readers are captions.py; `load_dataset` (registry.py) builds any of
them by name.

Fitting to the model's input size: when the target is larger by an even margin smaller than the
image, pad with the background value -1 (Fashion-MNIST 28 -> 32); otherwise resize bilinearly
(antialiased when shrinking; digits 8 -> 16). Nothing is downloaded; missing files raise
FileNotFoundError naming them and how to get them.
"""
import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (margin even, < image size) with -1 or resize [B, C, h, w] images to [B, C, size, size]."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h == w and size > h and (size - h) % 2 == 0 and size - h < h:
        m = (size - h) // 2
        return F.pad(x, (m, m, m, m), value=-1.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(h, w))


def _to_unit_range(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32)).div_(127.5).sub_(1.0)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz): magic 0x0000 | dtype 0x08 (uint8) | ndim, then dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"path: {path} is not a uint8 idx file (header {zero:#x} {dtype:#x})")
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"path: {path} holds {data.size} values, header says {dims}")
    return data.reshape(dims)


class TensorData:
    """In-memory images [N, C, H, W] and labels [N]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str):
        if x.dim() != 4 or y.shape != (x.shape[0],):
            raise ValueError(f"x, y: expected [N, C, H, W] and [N], got {tuple(x.shape)}, "
                             f"{tuple(y.shape)}")
        self.x, self.y, self.num_classes, self.name = x, y.long(), num_classes, name

    def __len__(self):
        return self.x.shape[0]

    @property
    def shape(self):
        return tuple(self.x.shape[1:])

    def get(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def fashion_mnist(size: int = 28, split: str = "train", root: str = FASHION_MNIST_DIR) -> TensorData:
    """Fashion-MNIST (60k train / 10k test, 10 classes) from the Debian package's idx files."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    files = [Path(root) / f"{prefix}-{kind}-idx{nd}-ubyte.gz" for kind, nd in (("images", 3),
                                                                             ("labels", 1))]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files not found: {', '.join(missing)}. Install them "
                                "with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu).")
    images, labels = (read_idx(f) for f in files)
    x = fit_size(_to_unit_range(images)[:, None], size)
    return TensorData(x, torch.from_numpy(labels.astype(np.int64)), 10, "fashion-mnist")


def digits(size: int = 8) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; values 0..16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).div_(8.0).sub_(1.0)[:, None]
    return TensorData(fit_size(x, size), torch.from_numpy(d.target.astype(np.int64)), 10, "digits")


class ImageFolder:
    """root/<class name>/<image files>; classes sorted by name; images loaded per batch."""

    def __init__(self, root: str, size: int, channels: int = 3):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"root: image folder {root} does not exist")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files, labels = [], []
        for k, name in enumerate(self.classes):
            for f in sorted((root / name).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(f)
                    labels.append(k)
        if not self.files:
            raise FileNotFoundError(f"root: no images ({'/'.join(IMAGE_SUFFIXES)}) in class "
                                    f"subfolders of {root}")
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels}")
        self.y = torch.tensor(labels, dtype=torch.long)
        self.size, self.channels, self.num_classes, self.name = size, channels, len(self.classes), "folder"

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (self.channels, self.size, self.size)

    def get(self, indices):
        idx = [int(i) for i in indices]
        return torch.stack([load_image(self.files[i], self.size, self.channels) for i in idx]), \
            self.y[idx]


def load_image(path, size: int, channels: int) -> torch.Tensor:
    """[channels, size, size] in [-1, 1]: the image centre-cropped to a square (as DiT does before
    resizing), then fitted to size."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    x = _to_unit_range(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)[None]
    if x.shape[-1] != x.shape[-2]:
        s = min(x.shape[-2:])
        top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
        x = x[..., top:top + s, left:left + s]
    return fit_size(x, size)[0]


def latents(root: str, scale: float = 1.0) -> TensorData:
    """Precomputed latents: root/latents.npy [N, C, H, W] float and root/labels.npy [N] int."""
    files = [Path(root) / "latents.npy", Path(root) / "labels.npy"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"latent files not found: {', '.join(missing)} (expected "
                                "latents.npy [N, C, H, W] and labels.npy [N])")
    z = torch.from_numpy(np.load(files[0]).astype(np.float32)) * scale
    y = torch.from_numpy(np.load(files[1]).astype(np.int64))
    return TensorData(z, y, int(y.max()) + 1, "latents")

