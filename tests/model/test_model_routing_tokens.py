"""Token selection, packed gather/scatter metadata, patchify, packing helpers, embedders."""
import math

import pytest
import torch

from sgkernels.model import TokenBatch, keep_count, patchify, unpatchify
from sgkernels.model import routing
from sgkernels.model.embedders import sincos_2d
from sgkernels.model.tokens import cu_seqlens_from_lengths, grid_pos, seg_from_lengths


@pytest.mark.parametrize("n, gamma, expected", [
    (256, 0.5, 128), (256, 0.0, 256), (10, 0.3, 7), (10, 0.99, 1), (16, 0.9, 2), (1, 0.5, 1),
    (100, 0.29, 71), (100, 0.57, 43),
])
def test_keep_count(n, gamma, expected):
    assert keep_count(n, gamma) == expected == max(1, n - math.floor(n * gamma + 1e-9))


def _batch(lengths, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return TokenBatch(
        x=torch.randn(total, dim, generator=g),
        pos=torch.cat([grid_pos(1, n, "cpu") for n in lengths]),
        seg=seg_from_lengths(lengths, "cpu"),
        cu_seqlens=cu_seqlens_from_lengths(lengths, "cpu"),
        max_seqlen=max(lengths),
        cond=torch.randn(len(lengths), dim, generator=g),
    )


def test_select_tokens_matches_brute_force():
    lengths, gammas = [5, 9, 1, 12], [0.4, 0.75, 0.5, 0.25]
    b = _batch(lengths)
    scores = torch.rand(sum(lengths), generator=torch.Generator().manual_seed(1))
    scores[3] = scores[4]                                   # a tie: the lower index wins
    plan = routing.plan_route(b, gammas, scores)
    expected, start = [], 0
    for n, g in zip(lengths, gammas):
        seg_scores = scores[start:start + n].tolist()
        order = sorted(range(n), key=lambda i: (seg_scores[i], i))[: keep_count(n, g)]
        expected += sorted(start + i for i in order)
        start += n
    assert plan.idx.tolist() == expected
    assert plan.keep.nonzero().flatten().tolist() == expected
    assert plan.lengths == tuple(keep_count(n, g) for n, g in zip(lengths, gammas))


def test_gather_carries_pos_and_seg_and_scatter_restores():
    lengths = [6, 4]
    b = _batch(lengths)
    plan = routing.plan_route(b, [0.5, 0.5], torch.rand(10, generator=torch.Generator()))
    r = routing.gather(b, plan)
    assert torch.equal(r.x, b.x[plan.idx]) and torch.equal(r.pos, b.pos[plan.idx])
    assert r.seg.tolist() == [0, 0, 0, 1, 1]
    assert r.cu_seqlens.tolist() == [0, 3, 5] and r.max_seqlen == 3
    assert torch.equal(r.cond, b.cond)
    out = routing.scatter(b.x, r.x + 1, plan)
    assert torch.equal(out[plan.keep], b.x[plan.keep] + 1)
    assert torch.equal(out[~plan.keep], b.x[~plan.keep])


def test_select_tokens_rejects_bad_scores():
    b = _batch([4])
    with pytest.raises(ValueError, match="route scores"):
        routing.plan_route(b, [0.5], torch.rand(5))
    with pytest.raises(ValueError, match="one gamma per segment"):
        routing.plan_route(b, [0.5, 0.5], torch.rand(4))


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 8, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 12, 12)
    assert torch.equal(unpatchify(tokens, 2, 8, 6), x)
    # token 1 is the patch at row 0, col 1; within a patch the layout is (p_row, p_col, C)
    assert torch.equal(tokens[0, 1].view(2, 2, 3), x[0, :, 0:2, 2:4].permute(1, 2, 0))


def test_token_batch_cat_and_lengths():
    a, b = _batch([3, 2]), _batch([4])
    p = TokenBatch.cat([a, b])
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.seg.tolist() == [0] * 3 + [1] * 2 + [2] * 4
    assert p.lengths == (3, 2, 4) and p.max_seqlen == 4 and p.cond.shape == (3, 4)
    assert a.segment_lengths() == (3, 2)


def test_grid_pos_row_major():
    assert grid_pos(2, 3, "cpu").tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_sincos_2d_layout():
    pos = grid_pos(3, 3, "cpu")
    emb = sincos_2d(pos, 8)
    # first half encodes the column: [sin(c), sin(c/100), cos(c), cos(c/100)]; then the row
    c, r = pos[:, 1].double(), pos[:, 0].double()
    ref = torch.stack([torch.sin(c), torch.sin(c / 100), torch.cos(c), torch.cos(c / 100),
                       torch.sin(r), torch.sin(r / 100), torch.cos(r), torch.cos(r / 100)], 1)
    torch.testing.assert_close(emb, ref.float())
