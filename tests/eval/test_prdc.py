import numpy as np
import pytest

from sgkernels.eval.prdc import PRDCResampler, knn_radii, prdc


def brute_prdc(real, fake, k, fake_ids=None):
    """Naeem et al. (2020) definitions written with explicit loops."""
    ids = list(range(len(fake))) if fake_ids is None else list(fake_ids)
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))

    def radius(points, i, same):
        d = sorted(dist(points[i], points[j]) for j in range(len(points)) if not same(i, j))
        return d[k - 1]

    r_real = [radius(real, i, lambda a, b: a == b) for i in range(len(real))]
    r_fake = [radius(fake, j, lambda a, b: ids[a] == ids[b]) for j in range(len(fake))]
    inside = [[dist(f, r) <= r_real[i] for i, r in enumerate(real)] for f in fake]
    precision = np.mean([any(row) for row in inside])
    density = sum(map(sum, inside)) / (k * len(fake))
    coverage = np.mean([any(inside[j][i] for j in range(len(fake))) for i in range(len(real))])
    recall = np.mean([any(dist(r, fake[j]) <= r_fake[j] for j in range(len(fake))) for r in real])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(k):
    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(23, 3)), rng.normal(size=(17, 3)) * 0.6 + 0.8
    got, want = prdc(real, fake, k), brute_prdc(real, fake, k)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["coverage"] < 1 and 0 < got["recall"] < 1   # not a degenerate case


def test_knn_radii_ignore_self_and_copies():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_radii(x, 1), [1, 1, 2, 4])
    np.testing.assert_allclose(knn_radii(x, 2), [3, 2, 3, 6])
    rows = x[[0, 0, 1, 2]]
    np.testing.assert_allclose(knn_radii(rows, 1, ids=[0, 0, 1, 2]), [1, 1, 1, 2])


def test_set_against_itself_and_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    same = prdc(real, real)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # each real ball holds its centre and its k neighbours: density = (k + 1) / k
    assert same["density"] == pytest.approx(6 / 5, abs=1e-12)
    fake = rng.normal(size=(300, 4))
    shifted = [prdc(real, fake + s) for s in (0.0, 0.5, 1.0, 2.0)]
    for name in ("precision", "density", "coverage", "recall"):
        values = [r[name] for r in shifted]
        assert values == sorted(values, reverse=True) and values[0] > values[-1], name


def test_resampler_equals_direct_evaluation_of_resamples():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.2
    fast = PRDCResampler(real, fake, k=3)
    assert fast(np.arange(30)) == pytest.approx(prdc(real, fake, 3), abs=1e-12)
    for seed in range(5):
        idx = np.random.default_rng(seed).integers(0, 30, 30)
        assert fast(idx) == pytest.approx(prdc(real, fake[idx], 3, fake_ids=idx), abs=1e-12)


def test_resampler_with_more_fakes_than_neighbour_lists():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(60, 2)), rng.normal(size=(120, 2))   # 120 - 1 > 8k + 20
    fast = PRDCResampler(real, fake, k=2)
    assert fast.nb_idx.shape == (120, 36)
    idx = rng.integers(0, 120, 120)
    assert fast(idx) == pytest.approx(prdc(real, fake[idx], 2, fake_ids=idx), abs=1e-12)


def test_bad_inputs():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k:"):
        prdc(x, x, k=10)
    with pytest.raises(ValueError, match="feature dims"):
        prdc(x, np.zeros((10, 3)), k=2)
    with pytest.raises(ValueError, match="real"):
        prdc(np.zeros(10), x)
