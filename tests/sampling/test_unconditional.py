"""Sampling an unconditional model (num_classes=0): labels None, no null branches."""
import pytest
import torch

from sgkernels.guidance import CFG, AutoGuidance, CFGSparseGuidance, SparseGuidance
from sgkernels.model import ModelConfig, Route, RoutedDiT
from sgkernels.sampling import sample


def unconditional_model(seed=0):
    config = ModelConfig(input_size=8, patch_size=2, in_channels=1, num_classes=0, depth=2,
                         dim=32, heads=2, routes=(Route(0, 1, 0.5),), time_freq_dim=32)
    torch.manual_seed(seed)
    model = RoutedDiT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("guidance", [None, SparseGuidance(2.0, 0.25, 0.75)])
def test_unconditional_model_samples_packed_like_separate(guidance):
    model = unconditional_model()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = [sample(model, noise, None, steps=2, guidance=guidance, packed=packed,
                  generator=torch.Generator().manual_seed(0)) for packed in (True, False)]
    assert out[0].shape == noise.shape and torch.isfinite(out[0]).all()
    assert (out[0] - noise).abs().max() > 1e-3
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_unconditional_model_with_autoguidance():
    model, weak = unconditional_model(0), unconditional_model(1)
    noise = torch.randn(2, 1, 8, 8)
    guided = sample(model, noise, None, steps=2, guidance=AutoGuidance(weak, 2.0))
    plain = sample(model, noise, None, steps=2)
    assert (guided - plain).abs().max() > 1e-4


def test_unconditional_model_rejects_labels_and_null_branches():
    model = unconditional_model()
    noise = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="labels must be None"):
        sample(model, noise, torch.zeros(2, dtype=torch.int64), steps=1)
    for guidance in (CFG(2.0), CFGSparseGuidance(2.0, 1.0, 0.25, 0.75)):
        with pytest.raises(ValueError, match="unconditional"):
            sample(model, noise, None, steps=1, guidance=guidance)
