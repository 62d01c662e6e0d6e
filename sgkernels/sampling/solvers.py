"""ODE solvers for the flow-matching sampler: integrate dx/dt = v(x, t) from t = 0 (noise) to
t = 1 (data) on the uniform grid t_i = i / steps, h = 1 / steps.

    euler   x_{i+1} = x_i + h · v(x_i, t_i)                                  1 evaluation / step
    heun    x̃ = x_i + h · v(x_i, t_i)
            x_{i+1} = x_i + h/2 · (v(x_i, t_i) + v(x̃, t_{i+1}))            2 evaluations / step

Heun is used on every step, the last one included (the flow-matching velocity is defined at
t = 1, unlike the EDM σ = 0 endpoint), so it is globally second order; Euler is first order.
`velocity(x, t, step)` receives the step index so guidance schedules stay per step.

`NonFiniteTracker` records, per image, the first step after which the state holds NaN / inf,
with a few device ops per step and no host sync; `sample` reads it once at the end.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

SOLVERS = ("euler", "heun")
EVALS_PER_STEP = {"euler": 1, "heun": 2}


def check_solver(solver) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def time_grid(steps: int) -> list[float]:
    """t_0 = 0, …, t_steps = 1."""
    return [i / steps for i in range(steps + 1)]


class NonFiniteTracker:
    """Per image (dim 0 of the state), the first step whose result holds NaN / inf, or -1.

    update(step, x) runs a few device ops and never syncs; `first_bad()` copies the [B] record
    to the host once."""

    def __init__(self, batch: int, device):
        self.first = torch.full((batch,), -1, dtype=torch.int64, device=device)

    def update(self, step: int, x: torch.Tensor) -> None:
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def first_bad(self) -> tuple[int, int, int] | None:
        """(image, step, number of non-finite images) of the earliest failure, or None."""
        first = self.first.cpu()
        hit = (first >= 0).nonzero().flatten()
        if not len(hit):
            return None
        steps = first[hit]
        k = int(torch.argmin(steps))                   # earliest step, lowest image on ties
        return int(hit[k]), int(steps[k]), len(hit)


def integrate(velocity: Callable[[torch.Tensor, float, int], torch.Tensor], x: torch.Tensor,
              steps: int, solver: str = "euler", progress: bool = False,
              on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """x at t = 1 from x at t = 0 with `steps` steps of `solver`; on_step(i, x) after step i."""
    check_solver(solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    grid = time_grid(steps)
    indices = range(steps)
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc=f"{solver} steps", leave=False)
    for i in indices:
        t0, t1 = grid[i], grid[i + 1]
        h = t1 - t0
        v0 = velocity(x, t0, i)
        if solver == "euler":
            x = x + h * v0
        else:
            x_pred = x + h * v0
            x = x + (0.5 * h) * (v0 + velocity(x_pred, t1, i))
        if on_step is not None:
            on_step(i, x)
    return x
