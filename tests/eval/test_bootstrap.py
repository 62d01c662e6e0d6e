from statistics import NormalDist

import numpy as np
import pytest

from sgkernels.eval.bootstrap import bootstrap


def test_standard_error_of_a_mean_matches_theory():
    x = np.random.default_rng(0).normal(3.0, 2.0, 400)
    ci = bootstrap(lambda idx: {"mean": x[idx].mean()}, len(x), 2000, seed=1)["mean"]
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ci["std"] == pytest.approx(se, rel=0.1)
    assert ci["mean"] == pytest.approx(x.mean(), abs=0.2 * se)
    assert ci["low"] == pytest.approx(x.mean() - 1.959964 * ci["std"], rel=1e-9)
    assert ci["high"] == pytest.approx(x.mean() + 1.959964 * ci["std"], rel=1e-9)


def test_interval_is_centred_on_the_estimate_of_a_shifted_statistic():
    """The number of distinct samples drops to ~63% in a resample; the interval stays around
    the full-set value while the replicate mean shows the shift."""
    n = 500
    ci = bootstrap(lambda idx: {"distinct": len(np.unique(idx)) / n}, n, 200)["distinct"]
    assert ci["mean"] == pytest.approx(1 - np.exp(-1), abs=0.01)
    assert (ci["low"] + ci["high"]) / 2 == pytest.approx(1.0)
    given = bootstrap(lambda idx: {"distinct": 0.5}, n, 5, estimate={"distinct": 0.7})
    assert given["distinct"] == {"low": 0.7, "high": 0.7, "std": 0.0, "mean": 0.5}


def test_resamples_are_with_replacement_and_seeded():
    seen = []
    bootstrap(lambda idx: seen.append(idx.copy()) or {"n": len(set(idx))}, 50, 20, seed=3)
    assert all(s.shape == (50,) and s.min() >= 0 and s.max() < 50 for s in seen)
    assert any(len(set(s)) < 50 for s in seen[1:])        # duplicates occur (seen[0]: estimate)
    again = bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=3)
    assert again == bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=3)
    assert again != bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=4)


def test_level_and_validation():
    x = np.random.default_rng(1).normal(size=100)
    wide = bootstrap(lambda i: {"m": x[i].mean()}, 100, 300, alpha=0.01)["m"]
    narrow = bootstrap(lambda i: {"m": x[i].mean()}, 100, 300, alpha=0.5)["m"]
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
    z = NormalDist().inv_cdf(0.995)
    assert wide["high"] - wide["low"] == pytest.approx(2 * z * wide["std"])
    with pytest.raises(ValueError, match="replicates"):
        bootstrap(lambda i: {}, 10, 1)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap(lambda i: {}, 10, 5, alpha=1.0)
