"""Bootstrap confidence intervals over the generated set.

Each replicate draws n indices with replacement from the n generated samples (numpy PCG64 seeded
with `seed`) and recomputes every metric on that resample against the fixed reference. The
interval is the percentile interval [q(alpha/2), q(1 - alpha/2)] of the replicates; their
standard deviation is reported as the bootstrap standard error.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap(statistic: Callable[[np.ndarray], dict[str, float]], n: int, replicates: int,
              seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """{metric: {"low", "high", "std"}} of `statistic(idx)` over resamples idx of range(n)."""
    if replicates < 2:
        raise ValueError(f"replicates: expected >= 2, got {replicates}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(replicates):
        for name, v in statistic(rng.integers(0, n, n)).items():
            values.setdefault(name, []).append(v)
    out = {}
    for name, vs in values.items():
        a = np.asarray(vs)
        low, high = np.quantile(a, [alpha / 2, 1 - alpha / 2])
        out[name] = {"low": float(low), "high": float(high), "std": float(a.std(ddof=1))}
    return out
