"""Precision, recall, density and coverage (Naeem et al., 2020) from k-nearest-neighbour balls.

With real features R (N rows), fake features F (M rows), NND_k(x) the distance from x to its k-th
nearest neighbour in its own set (itself excluded) and B(x, r) the closed ball:

    precision = 1/M  sum_j 1[ exists i: F_j in B(R_i, NND_k(R_i)) ]
    recall    = 1/N  sum_i 1[ exists j: R_i in B(F_j, NND_k(F_j)) ]
    density   = 1/(kM) sum_j sum_i 1[ F_j in B(R_i, NND_k(R_i)) ]
    coverage  = 1/N  sum_i 1[ exists j: F_j in B(R_i, NND_k(R_i)) ]

Distances are Euclidean, computed in float64 in row chunks (memory O(chunk · N)).
`fake_ids` marks rows that are copies of one sample (a bootstrap resample): copies are not each
other's neighbours, so a duplicated sample keeps the ball it had. `PRDCResampler` evaluates the
same four numbers for many resamples of the fake set after one pass over the distances.
"""
from __future__ import annotations

import numpy as np

CHUNK = 1024


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] in float64."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(sq, 0.0, None))


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features [N, D], got shape {x.shape}")
    return x


def knn_radii(features, k: int, ids=None) -> np.ndarray:
    """Distance from each row to its k-th nearest row with a different id (inf if none)."""
    f = _as_features(features, "features")
    ids = np.arange(f.shape[0]) if ids is None else np.asarray(ids)
    radii = np.empty(f.shape[0])
    for s in range(0, f.shape[0], CHUNK):
        d = pairwise_distances(f[s:s + CHUNK], f)
        d[ids[s:s + CHUNK, None] == ids[None, :]] = np.inf
        radii[s:s + CHUNK] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _check(real, fake, k: int) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _as_features(real, "real"), _as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real, fake: feature dims differ ({real.shape[1]} vs {fake.shape[1]})")
    if not isinstance(k, int) or k < 1 or min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"k: expected an int >= 1 below both set sizes ({real.shape[0]}, "
                         f"{fake.shape[0]}), got {k!r}")
    return real, fake


def prdc(real, fake, k: int = 5, fake_ids=None) -> dict[str, float]:
    """The four metrics of fake [M, D] against real [N, D] (see the module docstring)."""
    real, fake = _check(real, fake, k)
    r_real = knn_radii(real, k)
    r_fake = knn_radii(fake, k, fake_ids)
    near_real = 0
    total = 0
    covered = np.zeros(real.shape[0], bool)
    recalled = np.zeros(real.shape[0], bool)
    for s in range(0, fake.shape[0], CHUNK):
        d = pairwise_distances(fake[s:s + CHUNK], real)
        inside = d <= r_real[None, :]
        count = inside.sum(1)
        near_real += int((count > 0).sum())
        total += int(count.sum())
        covered |= inside.any(0)
        recalled |= (d <= r_fake[s:s + CHUNK, None]).any(0)
    m = fake.shape[0]
    return {"precision": near_real / m, "recall": float(recalled.mean()),
            "density": total / (k * m), "coverage": float(covered.mean())}


class PRDCResampler:
    """PRDC of resamples fake[idx] (copies marked as in `prdc(..., fake_ids=idx)`), fast.

    Precomputed once: for every fake row, how many real balls hold it; the (real, fake) pairs
    inside real balls; each fake's L nearest other fakes. A resample's fake ball radius is the
    distance at which the multiplicities of those neighbours first sum to k; L = 8k + 20
    neighbours carry at least k draws except with probability P(Poisson(L) < k) < 1e-15, and
    when L covers all other fakes the radius is exact (inf if fewer than k draws remain).
    Real-fake pairs farther than a fake's L-th neighbour can never be inside its ball.
    """

    def __init__(self, real, fake, k: int = 5):
        real, fake = _check(real, fake, k)
        self.k, self.n_real, self.n_fake = k, real.shape[0], fake.shape[0]
        r_real = knn_radii(real, k)
        n_nb = min(self.n_fake - 1, 8 * k + 20)
        exact = n_nb == self.n_fake - 1
        nb_idx, nb_dist, counts, cov, rec = [], [], [], [], []
        for s in range(0, self.n_fake, CHUNK):
            dff = pairwise_distances(fake[s:s + CHUNK], fake)
            dff[np.arange(dff.shape[0]), np.arange(s, s + dff.shape[0])] = np.inf
            part = np.argpartition(dff, n_nb - 1, axis=1)[:, :n_nb]
            order = np.take_along_axis(dff, part, 1).argsort(1, kind="stable")
            nb_idx.append(np.take_along_axis(part, order, 1))
            nb_dist.append(np.take_along_axis(dff, nb_idx[-1], 1))
            d = pairwise_distances(fake[s:s + CHUNK], real)
            inside = d <= r_real[None, :]
            counts.append(inside.sum(1))
            j, i = np.nonzero(inside)
            cov.append((i, j + s))
            bound = np.full(d.shape[0], np.inf) if exact else nb_dist[-1][:, -1]
            j, i = np.nonzero(d <= bound[:, None])
            rec.append((i, j + s, d[j, i]))
        self.nb_idx, self.nb_dist = np.concatenate(nb_idx), np.concatenate(nb_dist)
        self.count = np.concatenate(counts)
        self.cov_real, self.cov_fake = (np.concatenate(a) for a in zip(*cov))
        self.rec_real, self.rec_fake, self.rec_dist = (np.concatenate(a) for a in zip(*rec))

    def __call__(self, idx) -> dict[str, float]:
        idx = np.asarray(idx)
        mult = np.bincount(idx, minlength=self.n_fake)
        chosen = mult > 0
        m = idx.shape[0]
        cum = np.cumsum(mult[self.nb_idx], axis=1)
        hit = cum >= self.k
        first = hit.argmax(1)
        radius = np.where(hit.any(1), self.nb_dist[np.arange(self.n_fake), first], np.inf)
        covered = np.zeros(self.n_real, bool)
        covered[self.cov_real[chosen[self.cov_fake]]] = True
        recalled = np.zeros(self.n_real, bool)
        ok = chosen[self.rec_fake] & (self.rec_dist <= radius[self.rec_fake])
        recalled[self.rec_real[ok]] = True
        return {"precision": float((mult * (self.count > 0)).sum() / m),
                "recall": float(recalled.mean()),
                "density": float((mult * self.count).sum() / (self.k * m)),
                "coverage": float(covered.mean())}
