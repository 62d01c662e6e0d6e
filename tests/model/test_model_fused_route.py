"""The Llama route start (fused gather + RMSNorm-modulate) equals the unfused composition."""
import pytest
import torch
from model_helpers import inputs, randomize_, small_config

from sgkernels import ops
from sgkernels.model import Route, RoutedDiT, routing


def _unfused_route_start(block, b, plan):
    """route_gather, then the block with its own first rms_norm_modulate."""
    b = routing.gather(b, plan)
    return b.replace(x=block(b))


def _loss_and_grads(model, x, t, y, scores, gamma):
    model.zero_grad(set_to_none=True)
    v = model(x, t, y, gamma=gamma, route_scores=scores)
    (v * torch.linspace(-1, 1, v.numel(), device=v.device).view_as(v)).sum().backward()
    return v.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_route_start_equals_gather_then_norm(monkeypatch, device):
    config = small_config("llama", depth=5, routes=(Route(0, 1, 0.5), Route(3, 4, 0.25)))
    model = randomize_(RoutedDiT(config)).train().to(device)
    x, t, y = (v.to(device) for v in inputs(config, batch=3))
    scores = torch.rand(2, 3, config.num_tokens, generator=torch.Generator().manual_seed(1))
    scores = scores.to(device)
    gamma = [0.5, 0.0, 0.75]                 # a dense segment packed with routed ones

    calls = []
    fused = ops.route_gather_rms_norm_modulate
    monkeypatch.setattr(routing.ops, "route_gather_rms_norm_modulate",
                        lambda *a, **k: calls.append(a[1].shape[0]) or fused(*a, **k))
    v_fused, g_fused = _loss_and_grads(model, x, t, y, scores, gamma)
    n = config.num_tokens
    kept = 3 * n - (n // 2) - (3 * n // 4)
    assert calls == [kept, kept]             # one fused call per route start, on the kept rows

    monkeypatch.setattr(model, "_route_start", _unfused_route_start)
    v_ref, g_ref = _loss_and_grads(model, x, t, y, scores, gamma)
    assert len(calls) == 2                   # the reference path never calls the fused op
    tol = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(v_fused, v_ref, **tol)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_fused[name], g, rtol=10 * tol["rtol"], atol=tol["atol"],
                                   msg=name)


def test_sit_route_start_does_not_use_the_rms_norm_op(monkeypatch):
    config = small_config("sit")
    model = randomize_(RoutedDiT(config)).train()
    monkeypatch.setattr(routing.ops, "route_gather_rms_norm_modulate",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("fused RMSNorm")))
    x, t, y = inputs(config)
    assert torch.isfinite(model(x, t, y)).all()
