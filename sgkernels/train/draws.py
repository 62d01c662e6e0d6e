"""Per-sample random draws, each a pure function of (seed, global sample index).

Every random quantity of a training sample -- its noise z, its time t, its label-dropout coin and
its routing scores -- comes from a generator seeded by (seed, g), where g = step * global_batch + j
is the position of the sample in the global stream of training samples. Hence:

  * k data-parallel ranks that each take a slice of the global batch draw exactly what one
    process draws for the whole batch (the 1-process / k-process equivalence);
  * a resumed run draws what the uninterrupted run drew (the state is just the step).

Order of draws inside one sample's generator: z ~ N(0, I) [C, H, W]; n_t ~ N(0, 1) -> t;
u_drop ~ U(0, 1) -> drop label if u_drop < p; scores ~ U(0, 1) [R, N].

The data order is derived the same way: epoch e visits the dataset in the permutation
randperm(len, seed=(seed, e)), and global position g maps to epoch g // len, offset g % len.
"""
from dataclasses import dataclass

import numpy as np
import torch

from sgkernels.flow import t_from_normal
from sgkernels.model.tokens import to_device


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


_SAMPLE_STREAM, _ORDER_STREAM = 1, 2


@dataclass
class Draws:
    z: torch.Tensor       # [B, C, H, W] noise
    t: torch.Tensor       # [B] times in [0, 1]
    drop: torch.Tensor    # [B] bool: label -> null class
    scores: torch.Tensor  # [R, B, N] routing scores (R may be 0)

    def to(self, device) -> "Draws":
        """The draws on `device`, copied without a host sync (tokens.to_device)."""
        return Draws(*(to_device(v, device) for v in (self.z, self.t, self.drop, self.scores)))


def draw_samples(seed: int, indices, shape, num_routes: int, num_tokens: int,
                 t_sampling: str = "uniform", label_dropout: float = 0.1,
                 t_loc: float = 0.0, t_scale: float = 1.0) -> Draws:
    """Draws for the samples at global positions `indices` (a sequence of ints); on CPU."""
    zs, ns, us, scores = [], [], [], []
    for g in indices:
        gen = _generator(_SAMPLE_STREAM, seed, g)
        zs.append(torch.randn(tuple(shape), generator=gen))
        ns.append(torch.randn(1, generator=gen))
        us.append(torch.rand(1, generator=gen))
        scores.append(torch.rand(num_routes, num_tokens, generator=gen))
    t = t_from_normal(torch.cat(ns), t_sampling, t_loc, t_scale)
    return Draws(torch.stack(zs), t, torch.cat(us) < label_dropout, torch.stack(scores, 1))


class GlobalOrder:
    """Dataset indices of global sample positions: a fresh seeded permutation every epoch."""

    def __init__(self, length: int, seed: int):
        if length <= 0:
            raise ValueError(f"length: expected a non-empty dataset, got {length} samples")
        self.length, self.seed = length, seed
        self._epoch, self._perm = -1, None

    def __call__(self, positions) -> torch.Tensor:
        out = []
        for g in positions:
            epoch, offset = divmod(int(g), self.length)
            if epoch != self._epoch:
                gen = _generator(_ORDER_STREAM, self.seed, epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.length, generator=gen)
            out.append(int(self._perm[offset]))
        return torch.tensor(out, dtype=torch.long)


def rank_positions(step: int, global_batch: int, rank: int, world_size: int) -> range:
    """Global positions of this rank's slice of the global batch at `step` (contiguous shards)."""
    if global_batch % world_size:
        raise ValueError(f"global_batch: {global_batch} must be divisible by the world size "
                         f"{world_size}")
    local = global_batch // world_size
    start = step * global_batch + rank * local
    return range(start, start + local)
