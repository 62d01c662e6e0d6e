"""sgkernels.runtime: atomic writes, --device resolution and process group, uint8 images and grids."""
import errno
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sgkernels.runtime import device as D
from sgkernels.runtime import files
from sgkernels.runtime.images import IMAGE_CHANNELS, save_grid, to_uint8


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    path = files.write_text_atomic(tmp_path / "a.txt", "old")

    def half_then_fail(f):
        f.write(b"new but torn")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        files.atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]                 # no temporary file left


def test_a_failed_write_raises_the_os_error_naming_the_file(tmp_path):
    path = tmp_path / "sub" / "b.bin"                       # the folder is created

    def full_disk(f):
        f.write(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match=f"writing {path}: No space left") as info:
        files.atomic_write(path, full_disk)
    assert info.value.errno == errno.ENOSPC and files.reason(info.value) == os.strerror(
        errno.ENOSPC)
    assert not path.exists() and os.listdir(path.parent) == []


def test_savez_and_save_atomic_round_trip_and_stale_temps_are_removed(tmp_path):
    images, labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1), np.array([3, 7])
    path = files.savez_atomic(tmp_path / "s.npz", images, labels, extra=np.ones(2))
    with np.load(path) as f:
        assert np.array_equal(f["arr_0"], images) and np.array_equal(f["arr_1"], labels)
        assert sorted(f.files) == ["arr_0", "arr_1", "extra"]
    pt = files.save_atomic({"w": torch.arange(3)}, tmp_path / "w.pt")
    files.link_atomic(pt, tmp_path / "latest.pt")
    assert torch.equal(torch.load(tmp_path / "latest.pt", weights_only=True)["w"], torch.arange(3))
    stale = [tmp_path / ".w.pt.abc.tmp", tmp_path / ".latest.pt.123.link"]
    for p in stale:
        p.write_bytes(b"killed mid-write")
    assert sorted(files.remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "s.npz", "w.pt"]


def test_resolve_device_and_its_errors_name_the_argument():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device(None) == D.resolve_device("auto")
    for bad in ("tpu", "tpu:0", "not a device", "meta"):
        with pytest.raises(ValueError, match=r"^--sample-device: expected cpu, cuda or cuda:N"):
            D.resolve_device(bad, arg="--sample-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^--device 'cuda:0': no CUDA device"):
            D.resolve_device("cuda:0")


def test_setup_distributed_without_torchrun_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = D.setup_distributed("cpu")
    assert (info.rank, info.world_size, info.device, info.initialized_here) == (
        0, 1, torch.device("cpu"), False)
    assert info.is_main and not info.enabled and info.cpu_group is None
    with pytest.raises(ValueError, match="--device"):
        D.setup_distributed("tpu")


def test_to_uint8_maps_minus_one_to_one_onto_0_to_255():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5)
    u8 = to_uint8(x)
    assert u8.shape == (1, 1, 5, 1) and u8.dtype == np.uint8
    assert u8.ravel().tolist() == [0, 0, 128, 255, 255]     # round((x + 1) · 127.5), clamped
    assert to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
    for shape in ((2, 4, 4, 4), (3, 4, 4)):
        with pytest.raises(ValueError, match=re.escape(f"C in {IMAGE_CHANNELS}")):
            to_uint8(torch.zeros(shape))


@pytest.mark.parametrize("images, kwargs, size, mode", [
    (np.zeros((5, 4, 6, 1), np.uint8), {}, (3 * 8 + 2, 2 * 6 + 2), "L"),       # 3 x 2 grid
    (np.zeros((4, 4, 4, 3), np.uint8), {"ncol": 4, "pad": 1}, (4 * 5 + 1, 6), "RGB"),
    (torch.zeros(3, 1, 4, 4), {"ncol": 3, "upscale": 2}, (2 * 20, 2 * 8), "L"),
    (torch.zeros(2, 4, 4, 4), {"ncol": 2}, (14, 8), "L"),                      # latents: C 0
])
def test_save_grid_shapes(tmp_path, images, kwargs, size, mode):
    path = save_grid(images, tmp_path / "grids" / "g.png", **kwargs)
    img = Image.open(path)
    assert img.size == size and img.mode == mode
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr[0].min() == 255     # white padding on top
