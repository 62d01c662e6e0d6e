"""Datasets: idx reader, Fashion-MNIST, digits, image folder, latents, size fitting, errors."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import sgkernels.data as D


def _write_idx(path, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def _fake_fmnist(root, n=6):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    _write_idx(root / "train-images-idx3-ubyte.gz", images)
    _write_idx(root / "train-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_fashion_mnist_reader_scales_and_pads(tmp_path):
    images, _ = _fake_fmnist(tmp_path)
    ds = D.fashion_mnist(size=28, root=tmp_path)
    assert len(ds) == 6 and ds.shape == (1, 28, 28) and ds.num_classes == 10
    x, y = ds.get([4, 1])
    torch.testing.assert_close(x[0, 0], torch.from_numpy(images[4]).float() / 127.5 - 1)
    assert y.tolist() == [4, 1]
    padded = D.fashion_mnist(size=32, root=tmp_path).get([4])[0][0, 0]
    torch.testing.assert_close(padded[2:30, 2:30], x[0, 0])
    assert (padded[:2] == -1).all() and (padded[:, :2] == -1).all()


def test_fashion_mnist_missing_files_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        D.fashion_mnist(root=tmp_path)


def test_read_idx_rejects_truncated(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBBI", 0, 0x08, 1, 10) + b"\x00" * 4)
    with pytest.raises(ValueError, match="header says"):
        D.read_idx(path)


@pytest.mark.skipif(not Path(D.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install -y dataset-fashion-mnist")
def test_real_fashion_mnist():
    ds = D.fashion_mnist()
    assert len(ds) == 60_000 and ds.shape == (1, 28, 28)
    assert ds.x.min() == -1 and ds.x.max() == 1
    assert torch.bincount(ds.y).tolist() == [6000] * 10
    assert len(D.fashion_mnist(split="test")) == 10_000


def test_digits_range_and_resize():
    ds = D.digits(8)
    assert len(ds) == 1797 and ds.shape == (1, 8, 8)
    assert ds.x.min() == -1 and ds.x.max() == 1
    big = D.digits(16)
    assert big.shape == (1, 16, 16)
    # bilinear 2x upsampling keeps the image mean close
    torch.testing.assert_close(big.x.mean((2, 3)), ds.x.mean((2, 3)), atol=0.05, rtol=0)


def test_image_folder(tmp_path):
    from PIL import Image

    for k, name in enumerate(["ant", "cat"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            arr = np.full((10, 12, 3), 60 * k + i, np.uint8)
            Image.fromarray(arr).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = D.ImageFolder(tmp_path, size=8, channels=3)
    assert ds.classes == ["ant", "cat"] and len(ds) == 4 and ds.shape == (3, 8, 8)
    x, y = ds.get([0, 3])
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]
    torch.testing.assert_close(x[1], torch.full((3, 8, 8), 61 / 127.5 - 1))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.ImageFolder(tmp_path / "missing", 8)


def test_latents(tmp_path):
    z = np.random.default_rng(0).standard_normal((5, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "latents.npy", z)
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1, 0]))
    ds = D.load_dataset("latents", 4, str(tmp_path), latent_scale=0.5)
    x, y = ds.get([2])
    torch.testing.assert_close(x[0], torch.from_numpy(z[2]) * 0.5)
    assert ds.num_classes == 3 and y.tolist() == [2]
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        (tmp_path / "labels.npy").unlink()
        D.latents(tmp_path)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="name: expected one of"):
        D.load_dataset("cifar", 8)
    with pytest.raises(ValueError, match="needs --data-path"):
        D.load_dataset("folder", 8)


def test_fashion_mnist_captions_dataset(tmp_path):
    from sgkernels.data.captions import fashion_mnist_captions, image_attributes

    _fake_fmnist(tmp_path)
    ds = D.load_dataset("fashion-mnist-captions", 28, str(tmp_path))
    assert len(ds) == 6 and ds.shape == (1, 28, 28) and ds.num_classes == 0
    x, caps = ds.get([4, 1])
    plain = D.fashion_mnist(28, root=tmp_path).get([4, 1])[0]
    torch.testing.assert_close(x, plain)
    assert caps == [list(fashion_mnist_captions(label, *attrs).values())
                    for label, attrs in zip([4, 1], image_attributes(plain))]
    assert set(ds.all_captions()) == {c for i in range(6) for c in ds.get([i])[1][0]}


def test_captions_jsonl_needs_a_path():
    with pytest.raises(ValueError, match="captions-jsonl"):
        D.load_dataset("captions-jsonl", 8)
