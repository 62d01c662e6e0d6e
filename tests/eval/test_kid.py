import itertools

import numpy as np
import pytest

from sgkernels.eval.kid import KIDReference, kid, mmd2_unbiased


def brute_mmd2(x, y, x_ids=None):
    """Unbiased MMD^2 with the cubic kernel, written out pair by pair."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3
    ids = list(range(len(x))) if x_ids is None else list(x_ids)
    xx = [k(x[i], x[j]) for i, j in itertools.permutations(range(len(x)), 2) if ids[i] != ids[j]]
    yy = [k(y[i], y[j]) for i, j in itertools.permutations(range(len(y)), 2)]
    xy = [k(a, b) for a in x for b in y]
    return np.mean(xx) + np.mean(yy) - 2 * np.mean(xy)


def test_mmd_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(brute_mmd2(x, y), rel=1e-12)


def test_copies_are_not_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    ids = np.array([0, 1, 1, 2, 4])
    rows = x[ids]
    assert mmd2_unbiased(rows, y, ids) == pytest.approx(brute_mmd2(rows, y, ids), rel=1e-12)
    assert mmd2_unbiased(rows, y, ids) != pytest.approx(mmd2_unbiased(rows, y), rel=1e-6)


def test_single_full_subset_is_the_full_set_estimate():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    mean, std = kid(x, y, subsets=1, subset_size=20)
    assert mean == pytest.approx(mmd2_unbiased(x, y), rel=1e-12) and std == 0.0


def test_same_distribution_near_zero_and_shift_monotone():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(400, 8))
    gen = rng.normal(size=(400, 8))
    values = [kid(gen + s, ref, subsets=20, subset_size=200)[0] for s in (0.0, 0.25, 0.5, 1.0)]
    assert abs(values[0]) < 0.2 * values[1]   # estimator noise only
    assert values == sorted(values)


def test_seeded_and_validated():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    assert kid(x, y, 5, 10, seed=7) == kid(x, y, 5, 10, seed=7)
    assert kid(x, y, 5, 10, seed=7) != kid(x, y, 5, 10, seed=8)
    with pytest.raises(ValueError, match="gen, ref"):
        kid(x, y[:, :1])
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, y, subset_size=1)
    with pytest.raises(ValueError, match="gen_ids"):
        kid(x, y, gen_ids=np.arange(3))


def test_reference_terms_are_reused_across_generated_sets():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(50, 3))
    kr = KIDReference(ref, subsets=4, subset_size=20, seed=2)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 1
    assert kr(a) == kid(a, ref, 4, 20, seed=2) and kr(b) == kid(b, ref, 4, 20, seed=2)
    assert list(kr._ref_terms) == [20]
    kr._ref_terms[20][1][:] += 1.0                 # the cached within-reference means are used
    assert kr(a)[0] == pytest.approx(kid(a, ref, 4, 20, seed=2)[0] + 1.0)
