"""Euler and Heun on an analytic velocity field: exact solution and convergence order.

LinearFieldModel: v(x, t, y) = (a_y + 2t)·x, so x(1) = x(0)·exp(a_y + 1). Guidance is affine, so
CFG with scale ω integrates the field (ω a_c + (1−ω) a_∅ + 2t)·x exactly the same way.
"""
import math

import pytest
import torch

from sampling_fakes import LinearFieldModel

from sgkernels.guidance import CFG
from sgkernels.sampling import integrate, sample, time_grid


def max_error(steps, solver, guidance=None):
    model = LinearFieldModel()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 4, 9])
    out = sample(model, noise, labels, steps=steps, solver=solver, guidance=guidance, generator=g)
    if guidance is None:
        exact = model.exact(noise, labels)
    else:
        w = guidance.scale
        rate = w * model.rate(labels.double()) + (1 - w) * model.rate(torch.tensor(10.0))
        exact = noise * torch.exp(rate + 1.0).view(-1, 1, 1, 1)
    # relative max error; the field grows x by up to e^2
    return ((out - exact).abs().max() / exact.abs().max()).item(), model


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("guidance", [None, CFG(1.5)])
def test_convergence_order(solver, order, guidance):
    errors = [max_error(steps, solver, guidance)[0] for steps in (20, 40, 80)]
    assert errors[-1] < (0.05 if solver == "euler" else 1e-3)
    for coarse, fine in zip(errors, errors[1:]):
        assert math.log2(coarse / fine) == pytest.approx(order, abs=0.15)


def test_evaluations_per_step():
    _, euler = max_error(7, "euler")
    _, heun = max_error(7, "heun")
    assert len(euler.calls) == 7 and len(heun.calls) == 14


def test_euler_step_by_hand():
    # dx/dt = x + t from x0 = 1, two steps: x1 = 1 + 0.5·1 = 1.5, x2 = 1.5 + 0.5·(1.5 + 0.5)
    out = integrate(lambda x, t, step: x + t, torch.tensor([1.0], dtype=torch.float64), 2)
    assert out.item() == 2.5
    # Heun, one step: x̃ = 2, x1 = 1 + 0.5·(1 + (2 + 1)) = 3
    out = integrate(lambda x, t, step: x + t, torch.tensor([1.0], dtype=torch.float64), 1, "heun")
    assert out.item() == 3.0


def test_time_grid_and_errors():
    assert time_grid(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="solver must be one of"):
        integrate(lambda x, t, s: x, torch.zeros(1), 2, "rk4")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        integrate(lambda x, t, s: x, torch.zeros(1), 0)


def test_low_precision_noise_integrates_in_float32():
    model = LinearFieldModel()
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2])
    out = sample(model, noise.bfloat16(), labels, steps=40, solver="heun")
    assert out.dtype == torch.bfloat16
    assert {c["x_dtype"] for c in model.calls} == {torch.bfloat16}
    assert {c["t_dtype"] for c in model.calls} == {torch.float32}
    exact = model.exact(noise.bfloat16().double(), labels)
    # a float32 state keeps the error at the bf16 rounding of the model inputs and the output,
    # far below what 40 bf16 state updates accumulate
    rel = ((out.double() - exact).abs().max() / exact.abs().max()).item()
    assert rel < 0.005          # a bf16 state reaches 0.010 here
