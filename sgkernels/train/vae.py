"""Latent training through a diffusers AutoencoderKL loaded from a local folder only.

Encode: latent = scale * (mean + std * eps), eps the per-sample noise of draws.py (drawn here
from a seeded generator per sample, so it is reproducible and rank-independent); decode:
image = vae.decode(latent / scale). One-channel images are repeated to the VAE's 3 channels.
diffusers is an optional dependency, imported only when a VAE is requested; nothing is ever
downloaded (`local_files_only=True`).
"""
from pathlib import Path

import torch

from .draws import _generator

_VAE_STREAM = 3
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_vae(path, device="cpu"):
    """AutoencoderKL from a local folder holding config.json and the weights (or a vae/ subfolder)."""
    root = Path(path)
    if (root / "vae" / "config.json").exists():
        root = root / "vae"
    missing = [] if (root / "config.json").exists() else [str(root / "config.json")]
    if not any((root / w).exists() for w in WEIGHT_FILES):
        missing.append(" or ".join(str(root / w) for w in WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(f"vae: AutoencoderKL files not found: {'; '.join(missing)} "
                                "(give a local folder saved by AutoencoderKL.save_pretrained; "
                                "nothing is downloaded)")
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("vae: latent training needs diffusers: pip install diffusers") from e
    vae = AutoencoderKL.from_pretrained(str(root), local_files_only=True)
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: torch.Tensor, scale: float, seed: int, positions) -> torch.Tensor:
    """Images [B, 1|3, H, W] in [-1, 1] -> scaled latents sampled with per-sample noise."""
    x = images.to(vae.dtype)
    if x.shape[1] == 1 and vae.config.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    dist = vae.encode(x).latent_dist
    eps = torch.stack([torch.randn(tuple(dist.mean.shape[1:]), generator=_generator(_VAE_STREAM,
                                                                                    seed, g))
                       for g in positions]).to(dist.mean.device, dist.mean.dtype)
    return (scale * (dist.mean + dist.std * eps)).float()


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale: float) -> torch.Tensor:
    return vae.decode((latents / scale).to(vae.dtype)).sample.float().clamp(-1, 1)
