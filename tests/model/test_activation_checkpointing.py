"""Activation checkpointing of the blocks (RoutedDiT.set_activation_checkpointing): the same
loss and gradients as without it, for every model kind, and the memory the planner expects."""
import pytest
import torch

from sgkernels import presets
from sgkernels.model import RoutedDiT
from sgkernels.model.text import TextBatch

KINDS = {"Tiny/2": {}, "FMNIST-SiT-S/2": {"depth": 3, "routes": ((1, 2, 0.5),)},
         "FMNIST-MaskDiT-S/2": {"depth": 2, "decoder_depth": 1}, "Tiny-T2I/2": {}}


def _inputs(config, batch):
    g = torch.Generator().manual_seed(1)
    c = config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, c.num_classes, (batch,), generator=g) if c.num_classes else None
    text = (TextBatch(torch.randn(batch * 5, c.text_dim, generator=g), [5] * batch)
            if c.text_conditioned else None)
    scores = torch.rand(max(len(c.routes), int(c.maskdit)), batch, c.num_tokens, generator=g)
    return x, t, y, text, scores


def _loss_and_grads(model, config, policy):
    model.set_activation_checkpointing(policy)
    model.zero_grad(set_to_none=True)
    x, t, y, text, scores = _inputs(config, 3)
    v = model(x, t, y, text=text, route_scores=scores)
    loss = ((v - x) ** 2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("name", KINDS)
def test_gradients_identical_with_block_checkpointing(name):
    config = presets.get(name).replace(**KINDS[name])
    torch.manual_seed(0)
    model = RoutedDiT(config).train()
    for p in model.parameters():                 # adaLN-Zero would zero most gradients
        torch.nn.init.normal_(p, std=0.05)
    loss, grads = _loss_and_grads(model, config, "none")
    loss_ckpt, grads_ckpt = _loss_and_grads(model, config, "blocks")
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(model.parameters()))
    for n in grads:
        assert torch.equal(grads[n], grads_ckpt[n]), n


def test_checkpointing_is_off_in_inference_and_validated(monkeypatch):
    config = presets.get("Tiny/2")
    model = RoutedDiT(config).eval().set_activation_checkpointing("blocks")
    x, t, y, _, _ = _inputs(config, 2)

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("a block was checkpointed without autograd recording")
    monkeypatch.setattr("sgkernels.model.blocks._checkpoint", no_checkpoint)
    with torch.no_grad():
        model(x, t, y)
    with pytest.raises(AssertionError, match="checkpointed"):
        model(x, t, y)                              # grad mode: checkpointing applies
    with pytest.raises(ValueError, match="activation_checkpointing: expected one of"):
        model.set_activation_checkpointing("layers")
