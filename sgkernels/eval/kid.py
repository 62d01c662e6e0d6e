"""Kernel Inception Distance (Binkowski et al., 2018): unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x·y / d + 1)^3, averaged over random subsets of both sets.

For subsets X (generated) and Y (reference) of size s:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (s(s-1)) + sum_{i != j} k(y_i, y_j) / (s(s-1))
              - 2 sum_{i, j} k(x_i, y_j) / s^2

KID is the mean over `subsets` subset pairs (each drawn without replacement); the spread over
subsets is returned as well. `gen_ids` (bootstrap resamples) names the original sample behind
each generated row: pairs of copies of one sample are left out of the first sum like the
diagonal is, so a resample is scored as a sample of distinct draws. Reference subsets come from
their own seeded stream, so `KIDReference` computes their within-set sums once and reuses them
for every generated set of the same size (bootstrap replicates).
"""
from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _within(x: np.ndarray, ids: np.ndarray) -> float:
    """Mean of k(x_i, x_j) over pairs with ids[i] != ids[j]."""
    kxx = polynomial_kernel(x, x)
    same = ids[:, None] == ids[None, :]
    pairs = same.size - int(same.sum())
    if pairs == 0:
        raise ValueError("gen_ids: the generated subset holds copies of a single sample")
    return float((kxx.sum() - kxx[same].sum()) / pairs)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, x_ids: np.ndarray | None = None) -> float:
    """Unbiased MMD^2 between rows of x [m, D] and y [n, D] (m, n >= 2) with the cubic kernel."""
    ids = np.arange(x.shape[0]) if x_ids is None else np.asarray(x_ids)
    return _within(x, ids) + _within(y, np.arange(y.shape[0])) - 2.0 * float(
        polynomial_kernel(x, y).mean())


class KIDReference:
    """KID against fixed reference features ref [M, D] (see the module docstring)."""

    def __init__(self, ref, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
        self.ref = np.asarray(ref, np.float64)
        if self.ref.ndim != 2 or self.ref.shape[0] < 2:
            raise ValueError(f"ref: expected [M, D] with M >= 2, got {self.ref.shape}")
        if subsets < 1 or subset_size < 2:
            raise ValueError(f"subsets, subset_size: expected >= 1 and >= 2, got {subsets}, "
                             f"{subset_size}")
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed
        self._ref_terms: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    def _reference_subsets(self, s: int) -> tuple[list[np.ndarray], np.ndarray]:
        if s not in self._ref_terms:
            rng = np.random.default_rng([self.seed, 1])
            idx = [rng.choice(self.ref.shape[0], s, replace=False) for _ in range(self.subsets)]
            yy = np.array([_within(self.ref[i], np.arange(s)) for i in idx])
            self._ref_terms[s] = (idx, yy)
        return self._ref_terms[s]

    def __call__(self, gen, gen_ids=None) -> tuple[float, float]:
        """(mean, std over subsets) of MMD^2_u; subset size min(subset_size, N, M)."""
        gen = np.asarray(gen, np.float64)
        if gen.ndim != 2 or gen.shape[1] != self.ref.shape[1]:
            raise ValueError(f"gen: expected [N, {self.ref.shape[1]}], got {gen.shape}")
        s = min(self.subset_size, gen.shape[0], self.ref.shape[0])
        if s < 2:
            raise ValueError(f"gen: need at least 2 rows, got {gen.shape[0]}")
        ids = np.arange(gen.shape[0]) if gen_ids is None else np.asarray(gen_ids)
        if ids.shape != (gen.shape[0],):
            raise ValueError(f"gen_ids: expected shape ({gen.shape[0]},), got {ids.shape}")
        ref_idx, yy = self._reference_subsets(s)
        rng = np.random.default_rng([self.seed, 0])
        values = np.empty(self.subsets)
        for t in range(self.subsets):
            gi = rng.choice(gen.shape[0], s, replace=False)
            x = gen[gi]
            values[t] = (_within(x, ids[gi]) + yy[t]
                         - 2.0 * float(polynomial_kernel(x, self.ref[ref_idx[t]]).mean()))
        return float(values.mean()), float(values.std())


def kid(gen, ref, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        gen_ids=None) -> tuple[float, float]:
    """(mean, std over subsets) of MMD^2_u between random subsets of gen [N, D] and ref [M, D]."""
    ref = np.asarray(ref, np.float64)
    gen = np.asarray(gen, np.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"gen, ref: expected [N, D] and [M, D], got {gen.shape}, {ref.shape}")
    return KIDReference(ref, subsets, subset_size, seed)(gen, gen_ids)
