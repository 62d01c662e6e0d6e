"""EMA: e <- decay e + (1 - decay) w for float state, copy for integer buffers."""
import pytest
import torch
from torch import nn

from sgkernels.train.ema import EMA


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_ema_update_formula():
    torch.manual_seed(0)
    model = WithBuffer()
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.lin.weight.add_(1.0)
        model.count.fill_(5)
    ema.update(model)
    torch.testing.assert_close(ema.model.lin.weight, 0.75 * start["lin.weight"] +
                               0.25 * model.lin.weight)
    torch.testing.assert_close(ema.model.lin.bias, start["lin.bias"])
    assert ema.model.count.item() == 5
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=1.5)


def test_ema_warmup_decay_schedule():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.99, warmup=True)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(10) == 11 / 20 and ema.decay_at(10_000) == 0.99
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.mul_(3)
    ema.update(model, step=0)
    torch.testing.assert_close(ema.model.weight, 0.1 * start + 0.9 * model.weight)
    assert EMA(model, decay=0.99).decay_at(0) == 0.99
