"""Small configs and inputs shared by the model tests."""
import torch

from sgkernels.model import ModelConfig, Route


def small_config(flavour: str = "llama", maskdit: bool = False, **changes) -> ModelConfig:
    """An 8x8x2 latent (16 tokens of patch 2), 4 blocks of width 32, route r_{1->2} at 0.5."""
    base = dict(input_size=8, patch_size=2, in_channels=2, num_classes=5, depth=4, dim=32,
                heads=2, flavour=flavour, mlp_ratio=8 / 3 if flavour == "llama" else 4.0,
                routes=(Route(1, 2, 0.5),), time_freq_dim=32)
    if maskdit:
        base.update(routes=(), mask_ratio=0.5, decoder_depth=2, decoder_dim=16, decoder_heads=2)
    base.update(changes)
    return ModelConfig(**base)


# DiT-S/2 (width 384, 6 heads, patch 2, 4 latent channels, learn_sigma), cut to 2 blocks on an
# 8x8 input so that it runs in a second on CPU: the official-weights tests
DIT_S2 = ModelConfig(input_size=8, patch_size=2, in_channels=4, num_classes=10, depth=2,
                     dim=384, heads=6, flavour="sit", learn_sigma=True)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (adaLN-Zero ones included) random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs(config: ModelConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, config.num_classes + 1, (batch,), generator=g)
    return x, t, y
