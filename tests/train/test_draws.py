"""Per-sample draws and the data order: rank slices reproduce the 1-process batch exactly."""
import pytest
import torch

from sgkernels.train.draws import GlobalOrder, draw_samples, rank_positions


def _draw(positions, **kw):
    return draw_samples(7, list(positions), (1, 4, 4), 2, 16, **kw)


@pytest.mark.parametrize("world", [2, 4])
def test_rank_slices_concatenate_to_the_global_batch(world):
    full = _draw(rank_positions(3, 8, 0, 1), label_dropout=0.5)
    parts = [_draw(rank_positions(3, 8, r, world), label_dropout=0.5) for r in range(world)]
    assert torch.equal(torch.cat([p.z for p in parts]), full.z)
    assert torch.equal(torch.cat([p.t for p in parts]), full.t)
    assert torch.equal(torch.cat([p.drop for p in parts]), full.drop)
    assert torch.equal(torch.cat([p.scores for p in parts], 1), full.scores)
    assert full.scores.shape == (2, 8, 16)


def test_draws_depend_on_seed_and_position_only():
    a, b = _draw(range(8, 16)), _draw(range(8, 16))
    assert torch.equal(a.z, b.z) and torch.equal(a.t, b.t)
    c = _draw(range(16, 24))
    assert not torch.equal(a.z, c.z)
    d = draw_samples(8, list(range(8, 16)), (1, 4, 4), 2, 16)
    assert not torch.equal(a.z, d.z)


def test_label_dropout_rate_and_t_range():
    d = draw_samples(0, range(4000), (1, 1, 1), 0, 4, t_sampling="logit-normal", label_dropout=0.1)
    assert abs(d.drop.float().mean().item() - 0.1) < 0.02
    assert d.scores.shape == (0, 4000, 4)
    assert 0 < d.t.min() and d.t.max() < 1


def test_global_order_is_a_permutation_per_epoch():
    order = GlobalOrder(10, seed=3)
    e0, e1 = order(range(10)), order(range(10, 20))
    assert sorted(e0.tolist()) == list(range(10)) and sorted(e1.tolist()) == list(range(10))
    assert not torch.equal(e0, e1)
    # a batch straddling the epoch boundary sees the same indices as the two epochs
    assert torch.equal(order(range(7, 13)), torch.cat([e0[7:], e1[:3]]))
    assert torch.equal(GlobalOrder(10, seed=3)(range(12, 14)), e1[2:4])


def test_rank_positions_needs_divisible_batch():
    assert list(rank_positions(2, 6, 1, 2)) == [15, 16, 17]
    with pytest.raises(ValueError, match="global_batch"):
        rank_positions(0, 5, 0, 2)
