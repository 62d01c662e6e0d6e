"""Sample grids during training: fixed-seed noise, labels cycling over the classes (or fixed
captions for a text-conditioned model), dense model.

Samples come from `sgkernels.sampling.sample` (unguided, Euler from t = 0 noise to t = 1 data;
imported inside the function: train and sampling are peer layers). Images in [-1, 1] become
uint8 and are tiled into one PNG, one column per class.
"""
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def generate(model, shape, num_classes: int, count: int, steps: int, seed: int,
             device, text=None) -> torch.Tensor:
    """`count` samples of `shape` [C, H, W]; labels 0..num_classes-1 repeated, or for a
    text-conditioned model the captions `text` (a TextBatch of `count`); fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, *shape, generator=gen).to(device)
    labels = None if text is not None else (torch.arange(count) % max(num_classes, 1)).to(device)
    was_training = model.training
    model.eval()
    try:
        from sgkernels.sampling import sample  # lazy: train and sampling are peer layers

        return sample(model, noise, labels, steps=steps, solver="euler",
                      generator=torch.Generator().manual_seed(seed), text=text).float()
    finally:
        model.train(was_training)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> [B, H, W, C] uint8; C other than 1/3 keeps the first channel."""
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path, ncol: int, pad: int = 2, upscale: int = 1) -> Path:
    """Tile images row-major, `ncol` per row, into a PNG (nearest-neighbour `upscale`)."""
    from PIL import Image

    arr = to_uint8(images)
    b, h, w, c = arr.shape
    nrow = -(-b // ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(b):
        r, k = divmod(i, ncol)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + k * (w + pad):pad + k * (w + pad) + w] = arr[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
