"""RoutedDiT.compile_blocks: per-block torch.compile with dynamic token counts; forward and
gradients equal eager (also with activation checkpointing), one graph per block code path."""
import pytest
import torch
from model_helpers import inputs, randomize_, small_config
from torch._dynamo.utils import counters

from sgkernels.model import RoutedDiT

AOT = {"backend": "aot_eager"}


@pytest.mark.parametrize("flavour, checkpointing", [("llama", "none"), ("sit", "blocks"),
                                                    ("maskdit", "none")])
def test_compiled_blocks_match_eager_forward_and_backward(flavour, checkpointing):
    cfg = small_config("sit", maskdit=True) if flavour == "maskdit" else small_config(flavour)
    model = randomize_(RoutedDiT(cfg)).train().set_activation_checkpointing(checkpointing)
    x, t, y = inputs(cfg)
    scores = torch.rand(model.num_routes, 3, cfg.num_tokens,
                        generator=torch.Generator().manual_seed(0))

    def loss_and_grads(gamma):
        model.zero_grad(set_to_none=True)
        out = model(x, t, y, gamma=gamma, route_scores=scores)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    rates = ([0.5, 0.2, 0.0], [0.7, 0.7, 0.1], 0.25)
    eager = [loss_and_grads(g) for g in rates]
    torch._dynamo.reset()
    counters.clear()
    assert model.compile_blocks(**AOT) is model.compile_blocks(**AOT)   # again: nothing to do
    for gamma, (out_ref, grads_ref) in zip(rates, eager):
        out, grads = loss_and_grads(gamma)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        for g, ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)
    # llama: also the block after the fused route start; maskdit: the decoder's narrower blocks
    assert counters["stats"]["unique_graphs"] == 1 + (flavour != "sit")
    assert not counters["graph_break"]
