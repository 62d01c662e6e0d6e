"""Flow-matching path, time sampling, token->pixel masks and the FM / MaskDiT losses."""
import inspect
import math

import pytest
import torch

from sgkernels import flow
from sgkernels.train.args import TrainArgs
from sgkernels.train.objective import batch_loss


def test_path_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0.0, 1.0, 0.25])
    xt = flow.interpolate(x, z, t)
    torch.testing.assert_close(xt[0], z[0])
    torch.testing.assert_close(xt[1], x[1])
    torch.testing.assert_close(xt[2], 0.25 * x[2] + 0.75 * z[2])
    # v* is the derivative of the path in t (finite difference, exact for a straight line)
    h = 1e-3
    fd = (flow.interpolate(x, z, t + h) - flow.interpolate(x, z, t)) / h
    torch.testing.assert_close(fd, flow.target_velocity(x, z), atol=2e-3, rtol=0)


def test_interpolate_rejects_bad_shapes():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="t: expected shape"):
        flow.interpolate(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="z: expected shape"):
        flow.interpolate(x, torch.zeros(2, 1, 4, 3), torch.zeros(2))


def test_uniform_t_is_uniform():
    t = flow.sample_t(200_000, "uniform", torch.Generator().manual_seed(0))
    assert 0.0 <= t.min() and t.max() <= 1.0
    # each decile holds ~10% of the draws (std of a decile fraction ~ 0.0007)
    counts = torch.histc(t, bins=10, min=0, max=1) / t.numel()
    assert (counts - 0.1).abs().max() < 0.005


def test_logit_normal_t_matches_its_distribution():
    t = flow.sample_t(200_000, "logit-normal", torch.Generator().manual_seed(1), loc=0.5, scale=0.8)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.01
    assert abs(logit.std().item() - 0.8) < 0.01


def test_t_sampling_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode: expected one of"):
        flow.sample_t(4, "cosine")


def test_drop_labels():
    y = torch.tensor([0, 3, 7, 9])
    out = flow.drop_labels(y, torch.tensor([True, False, True, False]), 10)
    assert out.tolist() == [10, 3, 10, 9]
    with pytest.raises(ValueError, match="drop: expected a bool tensor"):
        flow.drop_labels(y, torch.tensor([1, 0, 1, 0]), 10)


def test_tokens_to_pixels_layout():
    # 2x3 token grid of patch 2: token n = (n // 3, n % 3) covers pixels [2i:2i+2, 2j:2j+2]
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 4] = True  # row 1, col 1
    pix = flow.tokens_to_pixels(mask, 2, 4, 6)
    assert pix.shape == (1, 1, 4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(pix[0, 0], expected)
    with pytest.raises(ValueError, match="token_mask: expected shape"):
        flow.tokens_to_pixels(torch.zeros(1, 5, dtype=torch.bool), 2, 4, 6)


def test_fm_loss_is_per_sample_mean():
    g = torch.Generator().manual_seed(2)
    v, x, z = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    per_sample = [((v[b] - (x[b] - z[b])) ** 2).mean() for b in range(3)]
    torch.testing.assert_close(flow.fm_loss(v, x, z), torch.stack(per_sample).mean())


def test_maskdit_loss_against_hand_computation():
    g = torch.Generator().manual_seed(3)
    b, c, h, w, p = 2, 3, 4, 4, 2
    v, x, z = (torch.randn(b, c, h, w, generator=g) for _ in range(3))
    t = torch.tensor([0.2, 0.7])
    lam = 0.37
    keep = torch.tensor([[True, False, False, True], [False, True, True, True]])
    visible = flow.tokens_to_pixels(keep, p, h, w).float()
    total = 0.0
    for i in range(b):
        seen = hidden = 0.0
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    e = (v[i, ch, r, col] - (x[i, ch, r, col] - z[i, ch, r, col])).item() ** 2
                    if keep[i, (r // p) * (w // p) + col // p]:
                        seen += e
                    else:
                        hidden += e
        total += (seen + lam * (1 - t[i].item()) ** 2 * hidden) / (c * h * w)
    got = flow.maskdit_loss(v, x, z, t, visible, lam)
    assert math.isclose(got.item(), total / b, rel_tol=1e-5)


def test_maskdit_loss_reduces_to_fm_loss_when_all_visible():
    g = torch.Generator().manual_seed(4)
    v, x, z = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(3))
    ones = torch.ones(2, 1, 4, 4)
    torch.testing.assert_close(flow.maskdit_loss(v, x, z, torch.rand(2), ones, 5.0),
                               flow.fm_loss(v, x, z))
    # all masked at t = 1: the masked term vanishes whatever lambda is
    assert flow.maskdit_loss(v, x, z, torch.ones(2), torch.zeros(2, 1, 4, 4), 5.0).item() == 0.0


def test_maskdit_lambda_has_one_default():
    assert flow.MASKDIT_LAMBDA == 0.1                                   # MaskDiT's setting
    assert inspect.signature(flow.maskdit_loss).parameters["lam"].default == flow.MASKDIT_LAMBDA
    assert inspect.signature(batch_loss).parameters["maskdit_lambda"].default == \
        flow.MASKDIT_LAMBDA
    assert TrainArgs.maskdit_lambda == flow.MASKDIT_LAMBDA
    # and the default weighs the masked term by 0.1 (1 - t)^2
    x, z = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    visible = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t = torch.tensor([0.0])
    loss = flow.maskdit_loss(torch.zeros_like(x), x, z, t, visible)
    assert loss.item() == pytest.approx((1 + 0.1 * 3) / 4)
