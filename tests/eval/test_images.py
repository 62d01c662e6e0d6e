import numpy as np
import pytest
import torch
from eval_helpers import blobs
from PIL import Image

from sgkernels.data.images import fit_size
from sgkernels.eval.images import (
    ImageSet,
    check_images,
    fit_to,
    load_images,
    load_reference,
    to_gray,
)


def test_npz_with_and_without_labels(tmp_path):
    x = blobs(6)
    np.savez(tmp_path / "a.npz", x, np.arange(6))
    np.savez(tmp_path / "b.npz", x[..., 0])            # [N, H, W] grey without labels
    a, b = load_images(tmp_path / "a.npz"), load_images(tmp_path / "b.npz")
    np.testing.assert_array_equal(a.images, x)
    np.testing.assert_array_equal(a.labels, np.arange(6))
    np.testing.assert_array_equal(b.images, x)
    assert b.labels is None


def test_png_folder_labels_from_integer_subfolders(tmp_path):
    x = blobs(4)
    for i, lab in enumerate([3, 1, 3, 0]):
        (tmp_path / "lab" / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i, ..., 0]).save(tmp_path / "lab" / str(lab) / f"{i:03d}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(x[i, ..., 0]).save(tmp_path / "flat" / f"{i:03d}.png")
    flat = load_images(tmp_path / "flat")
    np.testing.assert_array_equal(flat.images, x)
    assert flat.labels is None
    lab = load_images(tmp_path / "lab")                  # sorted by path: 0/, 1/, 3/, 3/
    np.testing.assert_array_equal(lab.labels, [0, 1, 3, 3])
    np.testing.assert_array_equal(lab.images, x[[3, 1, 0, 2]])


def test_rgb_png_and_mismatched_sizes(tmp_path):
    rgb = blobs(2, channels=3)
    for i in range(2):
        Image.fromarray(rgb[i]).save(tmp_path / f"{i}.png")
    np.testing.assert_array_equal(load_images(tmp_path).images, rgb)
    Image.fromarray(blobs(1, size=20)[0, ..., 0]).save(tmp_path / "2.png")
    with pytest.raises(ValueError, match="first image"):
        load_images(tmp_path)


def test_fit_to_undoes_the_trainer_padding():
    x = blobs(3)
    model_space = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    padded = fit_size(model_space, 32)                   # what the trainer feeds the model
    u8 = ((padded + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(fit_to(u8, 28), x)


def test_fit_to_resizes_other_sizes():
    x = np.full((2, 64, 64, 1), 200, np.uint8)
    y = fit_to(x, 28)
    assert y.shape == (2, 28, 28, 1) and y.dtype == np.uint8 and (y == 200).all()


def test_to_gray_matches_pil():
    rgb = blobs(2, channels=3)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])[..., None]
    assert np.abs(to_gray(rgb).astype(int) - expected).max() <= 1
    grey = blobs(2)
    assert to_gray(grey) is grey


def test_validation_and_head(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        check_images(np.zeros((1, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="C in"):
        check_images(np.zeros((1, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        ImageSet(blobs(3), np.arange(2), "x")
    s = ImageSet(blobs(5), np.arange(5), "x")
    assert len(s.head(2)) == 2 and s.head(None) is s
    with pytest.raises(ValueError, match="num"):
        s.head(6)
    assert s.digest() == ImageSet(blobs(5), None, "y").digest() != s.head(4).digest()
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="ref"):
        load_reference("imagenet")


def test_missing_fashion_mnist_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setenv("SGKERNELS_FMNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_reference("fashion-mnist-test")


def test_fractional_labels_are_an_error_not_truncated():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match=r"labels \(s\): expected integer class labels, got "
                                         r"float64 values such as \[0.5, 1.7, 2.0\]"):
        ImageSet(images, np.array([0.5, 1.7, 2.0]), "s")
    assert ImageSet(images, np.array([0.0, 1.0, 2.0]), "s").labels.tolist() == [0, 1, 2]
