"""Fused route start: gather the kept rows and apply the adaLN RMSNorm in one pass (math: the
docstring of route_gather_rms_norm_modulate). Equal to route_gather followed by
rms_norm_modulate, without the round trip of h through memory.

Roofline per call, T rows, K kept, D channels, e bytes per element (idx, seg, rstd not counted):
    fwd bytes 3·e·KD  (read K rows, write h and y; unfused: 4·e·KD)
    bwd bytes e·(3KD + TD)  (read dy, h, dh, write dx; unfused: e·(7KD + TD))
"""
from typing import Optional

import torch

from . import amp, dispatch, validate
from .custom import custom_op
from .norm import check_modulation

_OP = "route_gather_rms_norm_modulate"


@custom_op("sgkernels::route_gather_rms_norm_modulate")
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


@custom_op("sgkernels::route_gather_rms_norm_modulate_backward")
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
    """Fused route start: gather the kept rows and adaLN-RMSNorm them in one pass.

        h = x[idx]                                               (route_gather)
        y = rms_norm_modulate(h, weight, shift, scale, seg, eps)
    Gradients, from dh and dy (x gets both): dx = 0 outside idx, dx[idx] = dh + (the dx of
    rms_norm_modulate for dy); dweight, dshift, dscale as in rms_norm_modulate.

    Args:
        x: [T, D] fp32, fp16 or bf16, on CPU or CUDA.
        idx: [K] int32 or int64 on x's device: distinct rows in [0, T), in any order.
        weight, shift, scale, eps: as in rms_norm_modulate ([D] or None; [S, D]; [S, D]).
        seg: [K] int32, the segment of each kept row: values in [0, S), non-decreasing.

    Returns:
        (h, y): both [K, D] in x's dtype, on x's device; h is the routed blocks' residual
        stream, y the first block's normalized input.

    Raises:
        TypeError: as rms_norm_modulate, and idx not a tensor or not int32 / int64.
        ValueError: as rms_norm_modulate with seg [K], and idx not 1-D or not on x's device;
            idx values outside [0, T) or repeated (checked on CPU, and on CUDA under
            SGKERNELS_DEBUG=1).
    """
    validate.floating(_OP, "x", x)
    weight, shift, scale = amp.like(x, weight, shift, scale)
    validate.ndim(_OP, "x", x, 2)
    validate.index(_OP, "idx", idx, "x", x)
    weight, shift, scale, seg = check_modulation(_OP, x, weight, shift, scale, seg, idx.shape[0],
                                                 "K")
    h, y, _ = _fused(x.contiguous(), idx.contiguous(), weight, shift, scale, seg, float(eps))
    return h, y
