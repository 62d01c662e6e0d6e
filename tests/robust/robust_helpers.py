"""Tiny models, checkpoints and corrupt files shared by the bad-input tests."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch

from sgkernels import presets
from sgkernels.model import ModelConfig, Route, RoutedDiT

TINY = presets.get("Tiny/2")                # 28x28x1, 10 classes, depth 3, dim 64


def small_config(**changes) -> ModelConfig:
    """An 8x8x1 image (16 tokens), 2 blocks of width 32, one route at 0.5."""
    base = dict(input_size=8, patch_size=2, in_channels=1, num_classes=4, depth=2, dim=32,
                heads=2, flavour="llama", mlp_ratio=8 / 3, routes=(Route(1, 1, 0.5),),
                time_freq_dim=32)
    base.update(changes)
    return ModelConfig(**base)


def random_model(config: ModelConfig, seed: int = 0, scale: float = 0.05) -> RoutedDiT:
    """RoutedDiT with every parameter random (adaLN-Zero ones too), in eval mode."""
    torch.manual_seed(seed)
    model = RoutedDiT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def save_checkpoint(path, config: ModelConfig = TINY, state=None, seed: int = 0) -> str:
    """A checkpoint as the trainer writes it; `state` replaces both weight sets."""
    if state is None:
        state = random_model(config, seed).state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "step": 0,
                "args": {"model_config": config.to_dict()}}, path)
    return os.fspath(path)


def corrupt_checkpoints(folder) -> dict[str, str]:
    """name -> path of files that are not sgkernels checkpoints."""
    good = save_checkpoint(folder / "good.pt", small_config())
    data = open(good, "rb").read()
    files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"model = Tiny/2\nthis is not a checkpoint\n",
        "random": np.random.default_rng(0).bytes(2000),
    }
    out = {}
    for name, content in files.items():
        path = folder / f"{name}.pt"
        path.write_bytes(content)
        out[name] = os.fspath(path)
    torch.save({"model": np.zeros(3)}, folder / "numpy_global.pt")   # disallowed global
    out["numpy_global"] = os.fspath(folder / "numpy_global.pt")
    return out


class CountingModel:
    """A duck-typed model (no parameters) that counts its calls; v = 0."""

    def __init__(self, num_classes: int = 4, size: int = 2):
        self.config = SimpleNamespace(num_classes=num_classes, routes=(), num_tokens=size * size,
                                      decoder_depth=0, in_channels=1, input_size=size)
        self.calls = 0

    def __call__(self, x, t, y, gamma=None, generator=None, route_scores=None):
        self.calls += 1
        return torch.zeros_like(x)
