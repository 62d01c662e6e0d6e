"""Exponential moving average of model weights: e <- decay * e + (1 - decay) * w.

Floating-point parameters and buffers are averaged (in fp32 shadows); integer buffers are
copied. `ema.model` is a frozen copy of the model used for sampling and saved as "ema".
"""
import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay: expected a value in [0, 1], got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for name, shadow in self.model.state_dict().items():
            value = src[name].detach()
            if shadow.is_floating_point():
                shadow.lerp_(value.to(shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
