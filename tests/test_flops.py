"""Analytic forward FLOPs: the paper's SiT-XL/2 number and agreement with the real model."""
import pytest
import torch
from torch import nn

from sgkernels import presets
from sgkernels.flops.forward import block_token_counts, forward_gflops, forward_macs
from sgkernels.model import ModelConfig, Route, RoutedDiT


def test_sit_xl_dense_matches_paper():
    cfg = presets.get("SiT-XL/2")
    assert forward_gflops(cfg) == pytest.approx(114.42, rel=1e-3)
    assert sum(forward_macs(cfg).values()) == 114_393_563_136


def test_full_adds_attention_products():
    cfg = presets.get("SiT-XL/2")
    n, d = cfg.num_tokens, cfg.dim
    extra = forward_gflops(cfg, convention="full") - forward_gflops(cfg)
    assert extra == pytest.approx(2 * n * n * d * cfg.depth / 1e9, rel=1e-12)
    k = 128                                                 # keep(256, 0.5), blocks 2..24
    routed = forward_gflops(cfg, 0.5, "full") - forward_gflops(cfg, 0.5)
    assert routed == pytest.approx(2 * d * (5 * n * n + 23 * k * k) / 1e9, rel=1e-12)


def test_sg_flops_speedup_over_cfg():
    # docs/design.md §1: SG at gamma 0.5 / 0.9 on SiT-XL/2 is predicted 2.34x faster than CFG.
    cfg = presets.get("SiT-XL/2")
    speedup = 2 * forward_gflops(cfg) / (forward_gflops(cfg, 0.5) + forward_gflops(cfg, 0.9))
    assert speedup == pytest.approx(2.34, abs=0.005)


def test_rates():
    cfg = presets.get("SiT-B/2")
    values = [forward_gflops(cfg, g) for g in (0.0, 0.25, 0.5, 0.75, 0.9)]
    assert values == sorted(values, reverse=True)
    assert forward_gflops(cfg, None) == forward_gflops(cfg, 0.5)    # config route rate 0.5
    assert block_token_counts(cfg, 0.75) == [256] + [64] * 10 + [256]
    with pytest.raises(ValueError, match="convention"):
        forward_gflops(cfg, convention="fvcore")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        forward_gflops(cfg, 1.0)


def _hooked_macs(model: nn.Module, batch: int, *args, **kwargs) -> float:
    """MACs per image of every nn.Linear / nn.Conv2d the forward actually runs."""
    total = 0

    def hook(module, inputs, out):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += inputs[0].numel() // module.in_features * module.in_features \
                * module.out_features
        else:
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    model(*args, **kwargs)
    for h in handles:
        h.remove()
    return total / batch


_BASE = dict(input_size=8, patch_size=2, in_channels=3, num_classes=4, depth=4, dim=32, heads=2,
             time_freq_dim=16)


@pytest.mark.parametrize("config, gamma", [
    (ModelConfig(**_BASE, flavour="sit", learn_sigma=True, routes=(Route(1, 2, 0.5),)), 0.6),
    (ModelConfig(**_BASE, flavour="llama", mlp_ratio=8 / 3, routes=(Route(0, 1, 0.5),
                                                                    Route(3, 3, 0.5))), 0.3),
    (ModelConfig(**_BASE, flavour="llama", mlp_ratio=8 / 3), 0.0),
    (ModelConfig(**_BASE, flavour="sit", mask_ratio=0.5, decoder_depth=2, decoder_dim=16,
                 decoder_heads=2), 0.7),
    (ModelConfig(**_BASE, flavour="llama", mlp_ratio=8 / 3, mask_ratio=0.5, decoder_depth=1,
                 decoder_dim=24, decoder_heads=2), None),
])
def test_analytic_count_matches_module_hooks(config, gamma):
    torch.manual_seed(0)
    model = RoutedDiT(config).train()
    batch = 3
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size)
    t, y = torch.rand(batch), torch.randint(0, config.num_classes, (batch,))
    with model.record_token_counts() as counts:
        measured = _hooked_macs(model, batch, x, t, y, gamma=gamma)
    assert measured == sum(forward_macs(config, gamma).values())
    assert [c // batch for c in counts[-1]] == block_token_counts(config, gamma)
