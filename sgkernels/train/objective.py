"""The training loss of one batch, given the per-sample draws (draws.py) and the flow (flow.py).

    y'   = null class where the dropout coin fell, else y   (class-conditional models)
    text = the captions' features, the null caption where the coin fell; y = None (T2I models:
           the caption pick and its dropout happen in the conditioning hook, conditioning.py)
    x_t  = t x + (1 - t) z,   v* = x - z
    TREAD-routed or dense model:  L = fm_loss(v_theta(x_t, t, y'), x, z)
    MaskDiT model (routing on):   L = maskdit_loss(v_theta, x, z, t, Mbar, lambda), with Mbar the
                                  visible tokens the model reports (return_keep) mapped to pixels
Routing on: gamma=None, the model's own rates in train mode, with the drawn route scores (so the
token selection is a function of the sample). Routing off: gamma=0.0, a dense forward.
"""
import torch

from sgkernels.flow import (MASKDIT_LAMBDA, drop_labels, fm_loss, interpolate, maskdit_loss,
                            tokens_to_pixels)

from .draws import Draws


def num_route_draws(config) -> int:
    """R of route_scores [R, B, N]: one per TREAD route, one for the MaskDiT input mask."""
    return len(config.routes) or (1 if config.maskdit else 0)


def visible_pixels(keep: torch.Tensor, config) -> torch.Tensor:
    """The model's `return_keep` mask [1, B, N] (MaskDiT: R = 1) -> [B, 1, H, W] float pixels."""
    if keep.dim() != 3 or keep.shape[0] != 1 or keep.shape[2] != config.num_tokens:
        raise ValueError(f"keep: expected the MaskDiT token mask [1, B, {config.num_tokens}], "
                         f"got {tuple(keep.shape)}")
    return tokens_to_pixels(keep[0].bool(), config.patch_size, config.input_size,
                            config.input_size).float()


def batch_loss(model, config, x: torch.Tensor, y: torch.Tensor | None, draws: Draws,
               routing: str = "on", maskdit_lambda: float = MASKDIT_LAMBDA,
               text=None) -> torch.Tensor:
    """Scalar loss of one batch (mean over its samples); `model` may be DDP-wrapped.

    y: labels [B] (None for T2I models); text: TextBatch of B captions for T2I models, None else.
    """
    y_in = drop_labels(y, draws.drop, config.num_classes) if y is not None else None
    x_t = interpolate(x, draws.z, draws.t)
    scores = draws.scores if draws.scores.shape[0] else None
    if routing == "off":
        return fm_loss(model(x_t, draws.t, y_in, gamma=0.0, text=text), x, draws.z)
    if config.maskdit:
        v, keep = model(x_t, draws.t, y_in, route_scores=scores, return_keep=True, text=text)
        visible = visible_pixels(keep, config)
        return maskdit_loss(v, x, draws.z, draws.t, visible, maskdit_lambda)
    return fm_loss(model(x_t, draws.t, y_in, route_scores=scores, text=text), x, draws.z)
