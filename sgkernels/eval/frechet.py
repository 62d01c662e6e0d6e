"""Fréchet distance between Gaussians fitted to feature sets (FID, and the classifier-space CFD).

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

S1 S2 is similar to the symmetric PSD matrix A = S1^(1/2) S2 S1^(1/2) (AB and BA share their
eigenvalues), so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A)). Everything is done in float64 with
`eigh`: one eigendecomposition of the (fixed) reference covariance gives S1^(1/2), after which
each distance costs one symmetric eigenvalue problem. Eigenvalues below the round-off level of
the eigensolver (D · eps · lambda_max) are set to 0 before the square root, so the null space of
a rank-deficient covariance (N <= D) adds nothing instead of sqrt(round-off) per direction.
Covariances use the unbiased (N - 1) normalisation, as every FID tool does.
"""
from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected [N, D] with N >= 2, got shape {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape}, {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu and sigma must be finite")
    return mu, sigma


def _sqrt_eigenvalues(w: np.ndarray) -> np.ndarray:
    """sqrt of the eigenvalues of a PSD matrix, those below round-off treated as 0."""
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.sqrt(np.where(w > tol, w, 0.0))


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * _sqrt_eigenvalues(w)) @ v.T


class FrechetReference:
    """Reference Gaussian (mu, sigma) with S^(1/2) precomputed, for many distances against it."""

    def __init__(self, mu, sigma):
        self.mu, self.sigma = _check_stats(mu, sigma, "reference")
        self.sqrt_sigma = psd_sqrt(self.sigma)
        self.trace = float(np.trace(self.sigma))

    def distance(self, mu, sigma) -> float:
        mu, sigma = _check_stats(mu, sigma, "stats")
        if mu.shape != self.mu.shape:
            raise ValueError(f"stats: feature dimension {mu.shape[0]} != reference "
                             f"{self.mu.shape[0]}")
        a = self.sqrt_sigma @ sigma @ self.sqrt_sigma
        tr_sqrt = float(_sqrt_eigenvalues(np.linalg.eigvalsh((a + a.T) / 2)).sum())
        diff = self.mu - mu
        return float(diff @ diff + self.trace + np.trace(sigma) - 2.0 * tr_sqrt)

    def distance_to(self, features) -> float:
        return self.distance(*gaussian_stats(features))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    return FrechetReference(mu1, sigma1).distance(mu2, sigma2)
