"""Exponential moving average of model weights: e <- d_s * e + (1 - d_s) * w after step s.

d_s = decay, or with warm-up d_s = min(decay, (1 + s) / (10 + s)): early averages forget the
initial weights quickly, so short runs (a few thousand steps) get a useful EMA model. Floating-point
parameters and buffers are averaged in their own dtype; integer buffers are copied. `ema.model` is
a frozen copy of the model, used for sampling and saved as "ema".

update(..., skip=found_inf) (the trainer's --on-nonfinite skip) multiplies the weight 1 - d_s by
1 - found_inf on the device: no update where found_inf is 1, no host read. With found_inf 0 the
weight equals the float one exactly, so the result is bit-identical to update(..., skip=None).
"""
import copy

import torch
from torch import nn


def check_decay(decay: float) -> float:
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: expected a value in [0, 1], got {decay}")
    return decay


def decay_at(decay: float, warmup: bool, step: int) -> float:
    """d_s: `decay`, with warm-up min(decay, (1 + s) / (10 + s))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        self.decay, self.warmup = check_decay(decay), warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return decay_at(self.decay, self.warmup, step)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0, skip: torch.Tensor | None = None) -> None:
        """Fold in the weights after optimizer step `step` (0-based); skip: a 0-dim float tensor
        on the device, 1.0 to leave the EMA unchanged (buffers included)."""
        decay = self.decay_at(step)
        weights = {}
        if skip is not None:  # (1 - skip) * (1 - d) in float64: exactly 1 - d when skip is 0
            weight = (1.0 - skip.double()) * (1.0 - decay)
        src = model.state_dict()
        for name, shadow in self.model.state_dict().items():
            value = src[name].detach()
            if skip is None:
                if shadow.is_floating_point():
                    shadow.lerp_(value.to(shadow.dtype), 1.0 - decay)
                else:
                    shadow.copy_(value)
            elif shadow.is_floating_point():
                if shadow.dtype not in weights:
                    weights[shadow.dtype] = weight.to(shadow.dtype)
                shadow.lerp_(value.to(shadow.dtype), weights[shadow.dtype])
            else:
                shadow.copy_(torch.where(skip.bool(), shadow, value))

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
