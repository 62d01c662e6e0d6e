"""The routed forward traces into one graph (torch.compile fullgraph) with host-side rates."""
import pytest
import torch
from model_helpers import inputs, randomize_, small_config

from sgkernels.model import RoutedDiT


@pytest.mark.parametrize("maskdit", [False, True])
def test_fullgraph_compile_matches_eager(maskdit):
    cfg = small_config("llama", maskdit=maskdit)
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg)
    scores = torch.rand(1, 3, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(gamma=[0.5, 0.2, 0.0], route_scores=scores)
    x.requires_grad_(True)
    with model.record_token_counts() as eager_counts:
        ref = model(x, t, y, **kwargs)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with model.record_token_counts() as counts:             # forward hooks trace into the graph
        out = compiled(x, t, y, **kwargs)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)
    assert counts == eager_counts
