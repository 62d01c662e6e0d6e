"""Small fake models obeying the call contract model(x, t, y, gamma=None, generator=None,
route_scores=None) -> velocity, with closed-form outputs the tests can compute by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

NUM_CLASSES = 10


def fake_config(num_tokens=4, routes=1, num_classes=NUM_CLASSES):
    return SimpleNamespace(num_classes=num_classes, routes=(None,) * routes,
                           num_tokens=num_tokens, decoder_depth=0)


def per_sample_gamma(gamma, batch):
    if gamma is None:
        return torch.zeros(batch, dtype=torch.float64)
    if isinstance(gamma, torch.Tensor):
        return gamma.to(torch.float64).cpu()
    if isinstance(gamma, (list, tuple)):
        return torch.tensor(gamma, dtype=torch.float64)
    return torch.full((batch,), float(gamma), dtype=torch.float64)


class Recorder:
    """Remembers each call's batch size, labels and gammas."""

    def __init__(self):
        self.calls = []

    def record(self, x, y, gamma, t=None):
        self.calls.append({"batch": x.shape[0], "labels": y.tolist(),
                           "gamma": per_sample_gamma(gamma, x.shape[0]).tolist(),
                           "x_dtype": x.dtype, "t_dtype": None if t is None else t.dtype})


class ConstantModel(Recorder):
    """D(x, t, y; γ) = offset + 10·γ + (100 if y is the null class else y), constant over pixels."""

    def __init__(self, offset=1.0, num_classes=NUM_CLASSES):
        super().__init__()
        self.offset = offset
        self.config = fake_config(num_classes=num_classes)

    def __call__(self, x, t, y, gamma=None, generator=None, route_scores=None):
        self.record(x, y, gamma)
        g = per_sample_gamma(gamma, x.shape[0]).to(x.dtype)
        label = torch.where(y == self.config.num_classes, 100.0, y.to(x.dtype))
        value = self.offset + 10.0 * g + label
        return value.view(-1, 1, 1, 1).expand_as(x).clone()


class LinearFieldModel(Recorder):
    """v(x, t, y) = (a_y + 2t)·x with a_y = 0.1·(y + 1); exact flow x(1) = x(0)·exp(a_y + 1)."""

    def __init__(self):
        super().__init__()
        self.config = fake_config()

    @staticmethod
    def rate(y):
        return 0.1 * (y + 1)

    def __call__(self, x, t, y, gamma=None, generator=None, route_scores=None):
        self.record(x, y, gamma, t)
        a = self.rate(y.to(x.dtype))
        return (a + 2 * t.to(x.dtype)).view(-1, 1, 1, 1) * x

    def exact(self, x0, y):
        return x0 * torch.exp(self.rate(y.to(x0.dtype)) + 1.0).view(-1, 1, 1, 1)


class TokenDropModel(Recorder):
    """Token-sparse toy: pixels are tokens (N = H·W); route r keeps the keep(N, γ_b) tokens of
    lowest route score of sample b, and the output is x·(1 + label/10) on kept tokens plus the
    mean of x over the kept tokens of every route, so it depends on the exact selection."""

    def __init__(self, size=4, routes=2):
        super().__init__()
        self.config = fake_config(num_tokens=size * size, routes=routes)

    def __call__(self, x, t, y, gamma=None, generator=None, route_scores=None):
        self.record(x, y, gamma)
        b, n = x.shape[0], x.shape[2] * x.shape[3]
        gammas = per_sample_gamma(gamma, b)
        if route_scores is None:
            route_scores = torch.rand(len(self.config.routes), b, n, generator=generator)
        tokens = x.reshape(b, x.shape[1], n)
        out = torch.zeros_like(tokens)
        for r in range(route_scores.shape[0]):
            for i in range(b):
                keep = max(1, n - math.floor(n * float(gammas[i]) + 1e-9))
                kept = torch.argsort(route_scores[r, i], stable=True)[:keep]
                scale = 1.0 + float(y[i]) / 10.0 + t[i].item()
                out[i][:, kept] += scale * tokens[i][:, kept]
                out[i] += tokens[i][:, kept].mean(dim=1, keepdim=True)
        return out.reshape_as(x)
