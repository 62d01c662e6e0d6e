"""Ops under torch.autocast: inputs cast by the policy of sgkernels.ops.amp, bodies unchanged."""
import pytest
import torch

from sgkernels import ops
from sgkernels.model import RoutedDiT
from sgkernels.presets import get


def _segments():
    return torch.tensor([0, 5, 5, 12], dtype=torch.int32), 7


def test_attention_under_autocast_equals_explicit_bf16():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(12, 2, 64, generator=g) for _ in range(3))
    cu, max_len = _segments()
    expected = ops.varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, max_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.varlen_attention(q, k, v, cu, max_len)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_residual_stream_keeps_its_dtype_under_autocast():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 16, generator=g)
    y, gate, shift, scale = (torch.randn(s, 16, generator=g).bfloat16() for s in (12, 3, 3, 3))
    seg = torch.tensor([0] * 5 + [1] * 4 + [2] * 3, dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = ops.gated_residual(x, y, gate, seg)
        mod = ops.rms_norm_modulate(x, None, shift, scale, seg)
        idx, kept_seg = torch.tensor([11, 0, 4, 7]), torch.tensor([0, 1, 1, 2], dtype=torch.int32)
        routed = ops.route_gather_rms_norm_modulate(x, idx, None, shift, scale, kept_seg)
    assert res.dtype == mod.dtype == routed[0].dtype == routed[1].dtype == torch.float32
    assert torch.equal(res, ops.gated_residual(x, y.float(), gate.float(), seg))
    assert torch.equal(mod, ops.rms_norm_modulate(x, None, shift.float(), scale.float(), seg))
    expected = ops.route_gather_rms_norm_modulate(x, idx, None, shift.float(), scale.float(),
                                                  kept_seg)
    assert all(torch.equal(got, want) for got, want in zip(routed, expected))


@pytest.mark.parametrize("preset", ["Tiny/2"])
def test_llama_model_trains_under_autocast(preset):
    torch.manual_seed(0)
    model = RoutedDiT(get(preset))
    with torch.no_grad():  # leave the adaLN-Zero init, so that every block contributes
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    cfg = model.config
    assert cfg.flavour == "llama"
    x = torch.randn(3, cfg.in_channels, cfg.input_size, cfg.input_size)
    t, y = torch.rand(3), torch.tensor([0, 1, cfg.num_classes])
    ref = model(x, t, y, gamma=0.5, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y, gamma=0.5, generator=torch.Generator().manual_seed(2))
    out.float().square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
