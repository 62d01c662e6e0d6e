"""The batch loss: label dropout, routing on/off, MaskDiT loss on masked vs visible tokens."""
import math

import pytest
import torch
from torch import nn
from train_helpers import tiny_config, tiny_maskdit_config, tiny_model

from sgkernels.flow import fm_loss, interpolate, maskdit_loss, tokens_to_pixels
from sgkernels.model import keep_count
from sgkernels.train.draws import Draws, draw_samples
from sgkernels.train.objective import batch_loss, num_route_draws, visible_pixels


class Recorder(nn.Module):
    """Obeys the call contract; returns a fixed velocity and a fixed keep mask, records calls."""

    def __init__(self, config, v, keep):
        super().__init__()
        self.config, self.v, self.keep, self.calls = config, v, keep, []

    def forward(self, x, t, y, gamma=None, generator=None, route_scores=None, return_keep=False,
                text=None):
        self.calls.append({"x": x, "t": t, "y": y, "gamma": gamma, "route_scores": route_scores})
        return (self.v, self.keep) if return_keep else self.v


def _inputs(config, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, config.in_channels, config.input_size, config.input_size)
    x, z, v = (torch.randn(shape, generator=g) for _ in range(3))
    y = torch.tensor([3, 7])[:b]
    draws = Draws(z, torch.tensor([0.3, 0.8])[:b], torch.tensor([True, False])[:b],
                  torch.rand(num_route_draws(config), b, config.num_tokens, generator=g))
    return x, y, v, draws


def test_maskdit_batch_loss_against_hand_computation():
    cfg = tiny_maskdit_config()  # 8x8 image, patch 2: 4x4 tokens of 2x2 pixels
    x, y, v, draws = _inputs(cfg)
    keep = torch.zeros(1, 2, 16, dtype=torch.bool)
    keep[0, 0, [0, 5, 10, 15]] = True     # diagonal tokens visible in sample 0
    keep[0, 1, :8] = True                 # top half visible in sample 1
    model = Recorder(cfg, v, keep)
    lam = 0.3
    got = batch_loss(model, cfg, x, y, draws, "on", lam)
    expected = 0.0
    for b in range(2):
        err = (v[b, 0] - (x[b, 0] - draws.z[b, 0])) ** 2      # [8, 8]
        seen = hidden = 0.0
        for r in range(8):
            for c in range(8):
                token = (r // 2) * 4 + c // 2
                if keep[0, b, token]:
                    seen += err[r, c].item()
                else:
                    hidden += err[r, c].item()
        expected += (seen + lam * (1 - draws.t[b].item()) ** 2 * hidden) / 64
    assert math.isclose(got.item(), expected / 2, rel_tol=1e-5)
    call = model.calls[0]
    assert call["y"].tolist() == [cfg.num_classes, 7]          # label dropout to the null class
    torch.testing.assert_close(call["x"], interpolate(x, draws.z, draws.t))
    assert call["gamma"] is None and call["route_scores"] is draws.scores


def test_routing_off_is_dense_plain_fm():
    cfg = tiny_maskdit_config()
    x, y, v, draws = _inputs(cfg)
    model = Recorder(cfg, v, None)
    loss = batch_loss(model, cfg, x, y, draws, "off", 0.3)
    assert model.calls[0]["gamma"] == 0.0
    torch.testing.assert_close(loss, fm_loss(v, x, draws.z))


def test_routed_model_uses_plain_fm_with_drawn_scores():
    cfg = tiny_config()
    x, y, v, draws = _inputs(cfg)
    model = Recorder(cfg, v, None)
    torch.testing.assert_close(batch_loss(model, cfg, x, y, draws), fm_loss(v, x, draws.z))
    assert model.calls[0]["route_scores"].shape == (1, 2, 16)


def test_real_maskdit_model_masks_the_reported_tokens():
    cfg = tiny_maskdit_config()
    model = tiny_model(cfg).train()
    b = 4
    draws = draw_samples(0, range(b), (1, 8, 8), num_route_draws(cfg), cfg.num_tokens)
    x, y = torch.randn(b, 1, 8, 8), torch.arange(b)
    loss = batch_loss(model, cfg, x, y, draws, "on", 0.5)
    x_t = interpolate(x, draws.z, draws.t)
    y_in = torch.where(draws.drop, cfg.num_classes, y)
    v, keep = model(x_t, draws.t, y_in, route_scores=draws.scores, return_keep=True)
    assert keep.shape == (1, b, 16)
    assert keep[0].sum(1).tolist() == [keep_count(16, cfg.mask_ratio)] * b
    # the kept tokens are those of lowest score, as the contract says
    lowest = draws.scores[0].argsort(1)[:, :keep_count(16, cfg.mask_ratio)]
    assert all(set(lowest[i].tolist()) == set(keep[0, i].nonzero().flatten().tolist())
               for i in range(b))
    visible = tokens_to_pixels(keep[0], 2, 8, 8).float()
    torch.testing.assert_close(loss, maskdit_loss(v, x, draws.z, draws.t, visible, 0.5))


def test_visible_pixels_rejects_bad_keep():
    with pytest.raises(ValueError, match="keep: expected the MaskDiT token mask"):
        visible_pixels(torch.ones(2, 2, 16, dtype=torch.bool), tiny_maskdit_config())
