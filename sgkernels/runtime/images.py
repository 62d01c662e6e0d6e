"""Model-space images in [-1, 1] -> uint8 [N, H, W, C] (the DiT/ADM `.npz` layout), and a PNG
grid of them."""
import math
from pathlib import Path

import numpy as np
import torch

IMAGE_CHANNELS = (1, 3)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 via round((x + 1) · 127.5), clamped."""
    if images.dim() != 4 or images.shape[1] not in IMAGE_CHANNELS:
        raise ValueError(f"images must be [N, C, H, W] with C in {IMAGE_CHANNELS}, got "
                         f"{tuple(images.shape)}")
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images, path, ncol: int | None = None, pad: int = 2, upscale: int = 1) -> Path:
    """Tile images row-major, `ncol` per row (default ceil(sqrt(N)): a near-square grid), with
    `pad` white pixels around each, into a PNG enlarged `upscale` times (nearest neighbour).

    images: uint8 [N, H, W, C], or a tensor [N, C, H, W] in [-1, 1] (to_uint8; a C other than
    1 or 3, e.g. latents, shows its first channel).
    """
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = to_uint8(images if images.shape[1] in IMAGE_CHANNELS else images[:, :1])
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = img
    grid = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if upscale > 1:
        grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
