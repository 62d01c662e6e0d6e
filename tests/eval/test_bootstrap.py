import numpy as np
import pytest

from sgkernels.eval.bootstrap import bootstrap


def test_interval_of_a_mean_matches_the_normal_approximation():
    x = np.random.default_rng(0).normal(3.0, 2.0, 400)
    ci = bootstrap(lambda idx: {"mean": x[idx].mean()}, len(x), 2000, seed=1)["mean"]
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert ci["std"] == pytest.approx(se, rel=0.1)
    assert ci["low"] == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert ci["high"] == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_resamples_are_with_replacement_and_seeded():
    seen = []
    bootstrap(lambda idx: seen.append(idx.copy()) or {"n": len(set(idx))}, 50, 20, seed=3)
    assert all(s.shape == (50,) and s.min() >= 0 and s.max() < 50 for s in seen)
    assert any(len(set(s)) < 50 for s in seen)           # duplicates occur
    again = bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=3)
    assert again == bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=3)
    assert again != bootstrap(lambda idx: {"v": idx.sum()}, 50, 20, seed=4)


def test_level_and_validation():
    x = np.random.default_rng(1).normal(size=100)
    wide = bootstrap(lambda i: {"m": x[i].mean()}, 100, 300, alpha=0.01)["m"]
    narrow = bootstrap(lambda i: {"m": x[i].mean()}, 100, 300, alpha=0.5)["m"]
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]
    with pytest.raises(ValueError, match="replicates"):
        bootstrap(lambda i: {}, 10, 1)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap(lambda i: {}, 10, 5, alpha=1.0)
