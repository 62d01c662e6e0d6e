"""`python -m sgkernels sample` on official DiT / SiT checkpoint files: --ckpt-kind (auto
detection of official training checkpoints, bare state dicts), --routes for Sparse Guidance on a
dense official model, DiT refused (sgkernels/model/official.py, docs/interop.md)."""
import argparse
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from sgkernels.guidance import Schedule, SparseGuidance
from sgkernels.model import ModelConfig, RoutedDiT, load_official, to_official
from sgkernels.sampling import cli, sample

# SiT-S/2 width and heads, 2 blocks, 8x8 RGB "latent" (so the sampler writes images), learn_sigma
SIT = ModelConfig(input_size=8, patch_size=2, in_channels=3, num_classes=4, depth=2, dim=384,
                  heads=6, learn_sigma=True, time_scale=1.0)


def official_file(path, container=lambda state: state):
    model = RoutedDiT(SIT)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    torch.save(container(to_official(model, "sit")), path)
    return str(path)


def adm_header(path) -> tuple:
    """(shape, dtype) of arr_0 read the way ADM's evaluator streams a batch: the zip member
    arr_0.npy, its .npy header (C order only), then raw rows."""
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        read = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
        shape, fortran, dtype = read(f)
    assert not fortran
    return shape, dtype


def run(out, *argv):
    return cli.main(["--out", str(out), "--no-progress", "--device", "cpu", "--num", "3",
                     "--batch", "3", "--steps", "2", *argv])


def test_sparse_guidance_on_an_official_sit_file_matches_the_api(tmp_path):
    ckpt = official_file(tmp_path / "SiT.pt")
    assert run(tmp_path, "--ckpt", ckpt, "--ckpt-kind", "sit", "--routes", "0:1", "--seed", "2",
               "--guidance", "sg", "--scale", "2", "--gamma-strong", "0.25",
               "--gamma-weak", "0.75") == 0
    with np.load(tmp_path / "samples.npz") as f:
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (3, 8, 8, 3)   # ADM's layout: uint8 NHWC RGB
    assert adm_header(tmp_path / "samples.npz") == ((3, 8, 8, 3), np.dtype(np.uint8))
    model = load_official(ckpt, "sit", routes=[(0, 1)])
    gen = torch.Generator().manual_seed(2 * cli.SEED_STRIDE)
    noise = torch.randn(3, 3, 8, 8, generator=gen)
    guidance = SparseGuidance(2.0, Schedule.constant(0.25), Schedule.constant(0.75))
    x = sample(model, noise, torch.arange(3), steps=2, guidance=guidance, generator=gen)
    np.testing.assert_array_equal(arr, ((x.clamp(-1, 1) + 1) * 127.5).round().to(
        torch.uint8).permute(0, 2, 3, 1).numpy())


def test_auto_detects_an_official_sit_training_checkpoint(tmp_path):
    args = argparse.Namespace(model="SiT-S/2", path_type="Linear", prediction="velocity")
    ckpt = official_file(tmp_path / "train.pt",
                         lambda s: {"model": s, "ema": s, "opt": {}, "args": args})
    assert run(tmp_path, "--ckpt", ckpt) == 0
    assert (tmp_path / "samples.npz").exists()


def test_official_errors(tmp_path, capsys):
    bare = official_file(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="--ckpt: .* DiT and SiT share one layout"):
        run(tmp_path, "--ckpt", bare)
    with pytest.raises(SystemExit):
        run(tmp_path, "--ckpt", bare, "--ckpt-kind", "dit")
    assert "official DiT checkpoints predict DDPM noise" in capsys.readouterr().err
    args = argparse.Namespace(model="DiT-S/2", image_size=256)
    dit = official_file(tmp_path / "dit.pt", lambda s: {"model": s, "ema": s, "args": args})
    with pytest.raises(ValueError, match="--ckpt: .* holds official DiT weights"):
        run(tmp_path, "--ckpt", dit)
    for argv, message in ((["--routes", "2"], "expected 'a:b[,c:d]'"),
                          (["--model", "Tiny/2", "--routes", "0:1"], "describe a --ckpt")):
        with pytest.raises(SystemExit):
            run(tmp_path, *(["--ckpt", bare] if "--model" not in argv else []), *argv)
        assert message in capsys.readouterr().err


def test_command_line_one_line_error(tmp_path):
    bare = official_file(tmp_path / "bare.pt")
    proc = subprocess.run([sys.executable, "-m", "sgkernels", "sample", "--ckpt", bare,
                           "--out", str(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sgkernels sample: error: --ckpt: checkpoint")
    assert "give the kind, 'sit'" in proc.stderr and len(proc.stderr.splitlines()) == 1
