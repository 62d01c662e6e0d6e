"""Fused route start: gather the kept rows and apply the adaLN RMSNorm in one pass.

    h, y = route_gather_rms_norm_modulate(x, idx, weight, shift, scale, seg, eps)
        h = x[idx]                                          the routed blocks' residual stream
        y = rms_norm_modulate(h, weight, shift, scale, seg, eps)
          = h · r · w · (1 + scale[seg]) + shift[seg],      r = rsqrt(mean(h²) + eps)  (fp32)
    x [T, D]; idx [K] int32/int64 unique; weight [D] or None; shift, scale [S, D];
    seg [K] int32 non-decreasing: the segment of each kept row.

Backward, from the gradients dh and dy of both outputs (the gradient reaches x through both):
    dx = 0 outside idx,  dx[idx] = dh + (rms_norm_modulate's dx of dy)
    dweight, dshift, dscale as in rms_norm_modulate.
Equal to route_gather followed by rms_norm_modulate, without the round trip of h through memory.

Roofline per call, T rows, K kept, D channels, e bytes per element (idx, seg, rstd not counted):
    fwd bytes 3·e·KD  (read K rows, write h and y; unfused: 4·e·KD)
    bwd bytes e·(3KD + TD)  (read dy, h, dh, write dx; unfused: e·(7KD + TD))
"""
from typing import Optional

import torch

from . import amp, dispatch, validate
from .norm import check_modulation

_OP = "route_gather_rms_norm_modulate"


@torch.library.custom_op("sgkernels::route_gather_rms_norm_modulate", mutates_args=())
def _fused(
    x: torch.Tensor,
    idx: torch.Tensor,
    weight: Optional[torch.Tensor],
    shift: torch.Tensor,
    scale: torch.Tensor,
    seg: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    validate.idx_values(_OP, idx, x.shape[0])
    validate.seg_values(_OP, seg, shift.shape[0])
    fn = dispatch.get("route_gather_rms_norm_modulate_fwd", x.device)
    return fn(x, idx, weight, shift, scale, seg, eps)


@_fused.register_fake
def _(x, idx, weight, shift, scale, seg, eps):
    kept = idx.shape[0]
    return (x.new_empty(kept, x.shape[1]), x.new_empty(kept, x.shape[1]),
            x.new_empty(kept, dtype=torch.float32))


@torch.library.custom_op("sgkernels::route_gather_rms_norm_modulate_backward", mutates_args=())
def _fused_backward(
    dh: torch.Tensor,
    dy: torch.Tensor,
    h: torch.Tensor,
    idx: torch.Tensor,
    weight: Optional[torch.Tensor],
    scale: torch.Tensor,
    seg: torch.Tensor,
    rstd: torch.Tensor,
    num_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    fn = dispatch.get("route_gather_rms_norm_modulate_bwd", h.device)
    dx, dweight, dshift, dscale = fn(dh.contiguous(), dy.contiguous(), h, idx, weight, scale, seg,
                                     rstd, num_rows)
    return dx, (dweight if dweight is not None else h.new_empty(0)), dshift, dscale


@_fused_backward.register_fake
def _(dh, dy, h, idx, weight, scale, seg, rstd, num_rows):
    dweight = torch.empty_like(weight) if weight is not None else h.new_empty(0)
    return (h.new_empty(num_rows, h.shape[1]), dweight, torch.empty_like(scale),
            torch.empty_like(scale))


def _setup(ctx, inputs, output):
    x, idx, weight, _, scale, seg, _ = inputs
    h, _, rstd = output
    ctx.save_for_backward(h, idx, weight, scale, seg, rstd)
    ctx.num_rows = x.shape[0]


def _grad(ctx, dh, dy, _drstd):
    h, idx, weight, scale, seg, rstd = ctx.saved_tensors
    dx, dweight, dshift, dscale = _fused_backward(dh, dy, h, idx, weight, scale, seg, rstd,
                                                  ctx.num_rows)
    return dx, None, (dweight if weight is not None else None), dshift, dscale, None, None


_fused.register_autograd(_grad, setup_context=_setup)


def route_gather_rms_norm_modulate(x, idx, weight, shift, scale, seg, eps=1e-6):
    """(h, y) = (x[idx], rms_norm_modulate(x[idx], weight, shift, scale, seg, eps)) in one pass.

    x [T, D]; idx [K] unique rows (int32 or int64); weight [D] or None; shift, scale [S, D];
    seg [K] int32, non-decreasing, the segment of each kept row.
    """
    validate.floating(_OP, "x", x)
    weight, shift, scale = amp.like(x, weight, shift, scale)
    validate.ndim(_OP, "x", x, 2)
    validate.index(_OP, "idx", idx, "x", x)
    weight, shift, scale, seg = check_modulation(_OP, x, weight, shift, scale, seg, idx.shape[0],
                                                 "K")
    h, y, _ = _fused(x.contiguous(), idx.contiguous(), weight, shift, scale, seg, float(eps))
    return h, y
