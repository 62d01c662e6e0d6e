"""Sample grids during training: fixed-seed noise, labels cycling over the classes (or fixed
captions for a text-conditioned model), dense model.

Samples come from `sgkernels.sampling.sample` (unguided, Euler from t = 0 noise to t = 1 data;
imported inside the function: train and sampling are peer layers); the trainer tiles them into
one PNG, one column per class (runtime.images.save_grid).
"""
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
