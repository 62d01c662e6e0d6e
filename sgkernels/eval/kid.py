"""Kernel Inception Distance (Binkowski et al., 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x·y / d + 1)^3, averaged over random subsets of both sets.

For subsets X (generated) and Y (reference) of size s:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (s(s-1)) + sum_{i != j} k(y_i, y_j) / (s(s-1))
              - 2 sum_{i, j} k(x_i, y_j) / s^2

KID is the mean over `subsets` subset pairs (each drawn without replacement); the spread over
subsets is returned as well. `gen_ids` (bootstrap resamples) names the original sample behind
each generated row: pairs of copies of one sample are left out of the first sum like the
diagonal is, so a resample is scored as a sample of distinct draws.
"""
from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, x_ids: np.ndarray | None = None) -> float:
    """Unbiased MMD^2 between rows of x [m, D] and y [n, D] (m, n >= 2) with the cubic kernel."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    ids = np.arange(m) if x_ids is None else np.asarray(x_ids)
    distinct = ids[:, None] != ids[None, :]
    pairs = distinct.sum()
    if pairs == 0:
        raise ValueError("x_ids: the generated subset holds copies of a single sample")
    xx = kxx[distinct].sum() / pairs
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(gen, ref, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        gen_ids=None) -> tuple[float, float]:
    """(mean, std over subsets) of MMD^2_u between random subsets of gen [N, D] and ref [M, D].

    The subset size is min(subset_size, N, M); draws come from numpy's PCG64 seeded with `seed`.
    """
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"gen, ref: expected [N, D] and [M, D], got {gen.shape}, {ref.shape}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets, subset_size: expected >= 1 and >= 2, got {subsets}, "
                         f"{subset_size}")
    s = min(subset_size, gen.shape[0], ref.shape[0])
    if s < 2:
        raise ValueError(f"gen, ref: need at least 2 rows each, got {gen.shape[0]}, {ref.shape[0]}")
    ids = np.arange(gen.shape[0]) if gen_ids is None else np.asarray(gen_ids)
    if ids.shape != (gen.shape[0],):
        raise ValueError(f"gen_ids: expected shape ({gen.shape[0]},), got {ids.shape}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        gi = rng.choice(gen.shape[0], s, replace=False)
        ri = rng.choice(ref.shape[0], s, replace=False)
        values[i] = mmd2_unbiased(gen[gi], ref[ri], ids[gi])
    return float(values.mean()), float(values.std())
