"""RMSNorm and RMSNorm fused with adaLN modulation (math: the docstrings of the two ops).

Roofline per call, M rows of D channels, e bytes per element, S segments (weight optional):
    rms_norm            fwd bytes e·(2MD + D) + 4M (rstd)     FLOPs ≈ 4MD
                        bwd bytes e·(3MD + 2D) + 4M           FLOPs ≈ 9MD
    rms_norm_modulate   fwd bytes e·(2MD + D + 2SD) + 8M      FLOPs ≈ 7MD   (seg int32)
                        bwd bytes e·(3MD + 2D + 3SD) + 8M     FLOPs ≈ 15MD
"""
import math
from typing import Optional

import torch

from . import amp, dispatch, validate
from .custom import custom_op


@custom_op("sgkernels::rms_norm")
def _rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch.get("rms_norm_fwd", x.device)(x, weight, eps)


@_rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.float32)


@custom_op("sgkernels::rms_norm_backward")
def _rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dweight = dispatch.get("rms_norm_bwd", x.device)(dy.contiguous(), x, weight, rstd)
    return dx, (dweight if dweight is not None else x.new_empty(0))


@_rms_norm_backward.register_fake
def _(dy, x, weight, rstd):
    return torch.empty_like(x), (torch.empty_like(weight) if weight is not None else x.new_empty(0))


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dweight = _rms_norm_backward(dy, x, weight, rstd)
    return dx, (dweight if weight is not None else None), None


_rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last dim of x.

        y = x · r · weight,   r = rsqrt(mean(x², last dim) + eps)   (r and the mean in fp32)
    Gradients, with x̂ = x · r and g = dy · weight:
        dx = r · (g − x̂ · mean(g · x̂)),   dweight = Σ_rows dy · x̂   (deterministic sum)

    Args:
        x: [..., D] (any leading shape, at least 1-D), fp32, fp16 or bf16, on CPU or CUDA.
        weight: [D] in x's dtype on x's device, or None (no scale). Under torch.autocast it
            is cast to x's dtype.
        eps: added to the mean square.

    Returns:
        y: the shape, dtype and device of x (contiguous).

    Raises:
        TypeError: x or weight not a tensor; x not fp32 / fp16 / bf16; weight not in x's
            dtype.
        ValueError: x a scalar; weight not [D]; weight not on x's device.
    """
    op = "rms_norm"
    validate.floating(op, "x", x)
    (weight,) = amp.like(x, weight)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least 1 dim, got a scalar")
    if weight is not None:
        validate.like(op, "weight", weight, "x", x)
        validate.shape(op, "weight", weight, (x.shape[-1],), "[D]")
        weight = weight.contiguous()
    x2d = x.contiguous().reshape(math.prod(x.shape[:-1]), x.shape[-1])  # -1 fails at D = 0
    return _rms_norm(x2d, weight, float(eps))[0].reshape(x.shape)


@custom_op("sgkernels::rms_norm_modulate")
def _rms_norm_modulate(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    shift: torch.Tensor,
    scale: torch.Tensor,
    seg: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    validate.seg_values("rms_norm_modulate", seg, shift.shape[0])
    return dispatch.get("rms_norm_modulate_fwd", x.device)(x, weight, shift, scale, seg, eps)


@_rms_norm_modulate.register_fake
def _(x, weight, shift, scale, seg, eps):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.float32)


@custom_op("sgkernels::rms_norm_modulate_backward")
def _rms_norm_modulate_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    scale: torch.Tensor,
    seg: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    fn = dispatch.get("rms_norm_modulate_bwd", x.device)
    dx, dweight, dshift, dscale = fn(dy.contiguous(), x, weight, scale, seg, rstd)
    return dx, (dweight if dweight is not None else x.new_empty(0)), dshift, dscale


@_rms_norm_modulate_backward.register_fake
def _(dy, x, weight, scale, seg, rstd):
    dweight = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    return torch.empty_like(x), dweight, torch.empty_like(scale), torch.empty_like(scale)


def _rms_norm_modulate_setup(ctx, inputs, output):
    x, weight, _, scale, seg, _ = inputs
    ctx.save_for_backward(x, weight, scale, seg, output[1])


def _rms_norm_modulate_grad(ctx, dy, _drstd):
    x, weight, scale, seg, rstd = ctx.saved_tensors
    dx, dweight, dshift, dscale = _rms_norm_modulate_backward(dy, x, weight, scale, seg, rstd)
    return dx, (dweight if weight is not None else None), dshift, dscale, None, None


_rms_norm_modulate.register_autograd(_rms_norm_modulate_grad, setup_context=_rms_norm_modulate_setup)


def check_modulation(op, x, weight, shift, scale, seg, rows, rows_name):
    """Validate the adaLN arguments of an op on x [*, D] whose seg has `rows` entries (`rows_name`
    spells that count, e.g. "T"); returns (weight, shift, scale, seg) contiguous."""
    dim = x.shape[1]
    if weight is not None:
        validate.like(op, "weight", weight, "x", x)
        validate.shape(op, "weight", weight, (dim,), "[D]")
        weight = weight.contiguous()
    validate.like(op, "shift", shift, "x", x)
    validate.ndim(op, "shift", shift, 2)
    validate.shape(op, "shift", shift, (shift.shape[0], dim), "[S, D]")
    validate.like(op, "scale", scale, "x", x)
    validate.shape(op, "scale", scale, shift.shape, "[S, D] (the shape of shift)")
    validate.index(op, "seg", seg, "x", x, dtypes=(torch.int32,))
    validate.shape(op, "seg", seg, (rows,), f"[{rows_name}]")
    return weight, shift.contiguous(), scale.contiguous(), seg.contiguous()


def rms_norm_modulate(x, weight, shift, scale, seg, eps=1e-6):
    """RMSNorm with adaLN modulation per segment: token i belongs to segment seg[i].

        y = x · r · weight · (1 + scale[seg]) + shift[seg],   r = rsqrt(mean(x², dim 1) + eps)
    (r and the mean in fp32). Gradients, with x̂ = x · r and g = dy · (1 + scale[seg]) · weight:
        dx = r · (g − x̂ · mean(g · x̂)),   dweight = Σ_rows dy · (1 + scale[seg]) · x̂,
        dshift = Σ_seg dy,   dscale = Σ_seg dy · x̂ · weight   (deterministic sums)

    Args:
        x: [T, D] fp32, fp16 or bf16, on CPU or CUDA.
        weight: [D] or None (no scale).
        shift: [S, D], one row per segment.
        scale: [S, D] (the shape of shift).
        seg: [T] int32, values in [0, S), non-decreasing (tokens grouped by segment).
        eps: added to the mean square.
        weight, shift and scale are in x's dtype (under torch.autocast they are cast to it);
        every tensor is on x's device.

    Returns:
        y: [T, D] in x's dtype, on x's device (contiguous).

    Raises:
        TypeError: an argument not a tensor; x not fp32 / fp16 / bf16; weight, shift or scale
            not in x's dtype; seg not int32.
        ValueError: x not 2-D; weight not [D]; shift not [S, D]; scale not shift's shape;
            seg not [T]; a tensor not on x's device; seg values outside [0, S) or decreasing
            (checked on CPU, and on CUDA under SGKERNELS_DEBUG=1).
    """
    op = "rms_norm_modulate"
    validate.floating(op, "x", x)
    weight, shift, scale = amp.like(x, weight, shift, scale)
    validate.ndim(op, "x", x, 2)
    weight, shift, scale, seg = check_modulation(op, x, weight, shift, scale, seg, x.shape[0], "T")
    return _rms_norm_modulate(x.contiguous(), weight, shift, scale, seg, float(eps))[0]
