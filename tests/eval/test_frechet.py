import numpy as np
import pytest
import scipy.linalg

from sgkernels.eval.frechet import FrechetReference, frechet_distance, gaussian_stats, psd_sqrt


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    v1, v2 = rng.uniform(0.1, 3, 7), rng.uniform(0.1, 3, 7)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_full_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_singular_covariance_and_symmetry():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 10))             # 5 samples in 10-d: rank-4 covariance
    y = rng.normal(size=(40, 10)) + 0.5
    (m1, s1), (m2, s2) = gaussian_stats(x), gaussian_stats(y)
    d12, d21 = frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1)
    assert d12 == pytest.approx(d21, rel=1e-9)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-9


def test_gaussian_stats_is_unbiased_covariance():
    x = np.random.default_rng(3).normal(size=(50, 4))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
    assert sigma.dtype == np.float64


def test_psd_sqrt_squares_back():
    a = np.random.default_rng(4).normal(size=(6, 6))
    s = a @ a.T
    r = psd_sqrt(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-10)
    np.testing.assert_allclose(r, r.T)


def test_shift_increases_distance_monotonically():
    x = np.random.default_rng(5).normal(size=(200, 3))
    ref = FrechetReference(*gaussian_stats(x))
    d = [ref.distance_to(x + s) for s in (0.0, 0.1, 0.5, 1.0)]
    assert abs(d[0]) < 1e-10
    assert d == sorted(d) and d[-1] == pytest.approx(3.0, rel=1e-9)   # |shift|^2 = 3·1^2


def test_bad_inputs():
    with pytest.raises(ValueError, match="features"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="dimension"):
        FrechetReference(np.zeros(3), np.eye(3)).distance(np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
