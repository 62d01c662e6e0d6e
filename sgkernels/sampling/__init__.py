"""Guided sampling: solvers (Euler, Heun on t: 0 → 1), packed branch evaluation, `sample`.

The guidance rules themselves live in `sgkernels.guidance`; `python -m sgkernels sample` is
`sgkernels.sampling.cli`.
"""
from .packing import guided_velocity
from .sampler import sample
from .solvers import SOLVERS, integrate, time_grid

__all__ = ["sample", "integrate", "time_grid", "guided_velocity", "SOLVERS"]
