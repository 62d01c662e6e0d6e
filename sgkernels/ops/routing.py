"""Token routing (TREAD): gather the kept rows, later write the processed rows back (math: the
docstrings of route_gather and route_scatter; gather's backward is route_scatter onto zeros).

Roofline per call, e bytes per element, idx of i bytes per entry:
    route_gather   fwd bytes 2·e·KD + i·K          bwd bytes e·(TD + KD) + i·K (zero fill + rows)
    route_scatter  fwd bytes e·(2TD + KD) + i·K    bwd bytes e·(2TD + KD) + i·K     FLOPs 0
"""
import torch

from . import amp, dispatch, validate
from .custom import custom_op


@custom_op("sgkernels::route_gather")
def _route_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    validate.idx_values("route_gather", idx, x.shape[0])
    return dispatch.get("route_gather_fwd", x.device)(x, idx)


@_route_gather.register_fake
def _(x, idx):
    return x.new_empty(idx.shape[0], x.shape[1])


@custom_op("sgkernels::route_gather_backward")
def _route_gather_backward(dout: torch.Tensor, idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    base = dout.new_zeros(num_rows, dout.shape[1])
    return dispatch.get("route_scatter_fwd", dout.device)(base, dout, idx)


@_route_gather_backward.register_fake
def _(dout, idx, num_rows):
    return dout.new_empty(num_rows, dout.shape[1])


def _gather_setup(ctx, inputs, output):
    x, idx = inputs
    ctx.save_for_backward(idx)
    ctx.num_rows = x.shape[0]


def _gather_grad(ctx, dout):
    (idx,) = ctx.saved_tensors
    return _route_gather_backward(dout.contiguous(), idx, ctx.num_rows), None


_route_gather.register_autograd(_gather_grad, setup_context=_gather_setup)


@custom_op("sgkernels::route_scatter")
def _route_scatter(base: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    validate.idx_values("route_scatter", idx, base.shape[0])
    return dispatch.get("route_scatter_fwd", base.device)(base, y, idx)


@_route_scatter.register_fake
def _(base, y, idx):
    return torch.empty_like(base)


@custom_op("sgkernels::route_scatter_backward")
def _route_scatter_backward(dout: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch.get("route_scatter_bwd", dout.device)(dout, idx)


@_route_scatter_backward.register_fake
def _(dout, idx):
    return torch.empty_like(dout), dout.new_empty(idx.shape[0], dout.shape[1])


def _scatter_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _scatter_grad(ctx, dout):
    (idx,) = ctx.saved_tensors
    dbase, dy = _route_scatter_backward(dout.contiguous(), idx)
    return dbase, dy, None


_route_scatter.register_autograd(_scatter_grad, setup_context=_scatter_setup)


def _check_idx(op, idx, x_name, x):
    validate.index(op, "idx", idx, x_name, x)
    return idx.contiguous()


def route_gather(x, idx):
    """Gather the kept rows of x.

        out = x[idx]
    Gradient: dx = zeros [T, D] with dx[idx] = dout.

    Args:
        x: [T, D] fp32, fp16 or bf16, on CPU or CUDA.
        idx: [K] int32 or int64 on x's device: distinct rows in [0, T), in any order.

    Returns:
        out: [K, D] in x's dtype, on x's device.

    Raises:
        TypeError: x or idx not a tensor; x not fp32 / fp16 / bf16; idx not int32 / int64.
        ValueError: x not 2-D; idx not 1-D or not on x's device; idx values outside [0, T) or
            repeated (checked on CPU, and on CUDA under SGKERNELS_DEBUG=1).
    """
    op = "route_gather"
    validate.floating(op, "x", x)
    validate.ndim(op, "x", x, 2)
    return _route_gather(x.contiguous(), _check_idx(op, idx, "x", x))


def route_scatter(base, y, idx):
    """Write processed rows back: a copy of base with rows idx replaced by y.

        out = base;  out[idx] = y
    Gradients: dbase = dout with rows idx zeroed,   dy = dout[idx].

    Args:
        base: [T, D] fp32, fp16 or bf16, on CPU or CUDA.
        y: [K, D] in base's dtype (under torch.autocast it is cast to it), on base's device.
        idx: [K] int32 or int64 on base's device: distinct rows in [0, T), in any order.

    Returns:
        out: [T, D] in base's dtype, on base's device (base itself is not modified).

    Raises:
        TypeError: an argument not a tensor; base not fp32 / fp16 / bf16; y not in base's
            dtype; idx not int32 / int64.
        ValueError: base not 2-D; y not [K, D]; idx not 1-D; y or idx not on base's device;
            idx values outside [0, T) or repeated (checked on CPU, and on CUDA under
            SGKERNELS_DEBUG=1).
    """
    op = "route_scatter"
    validate.floating(op, "base", base)
    (y,) = amp.like(base, y)
    validate.ndim(op, "base", base, 2)
    validate.like(op, "y", y, "base", base)
    idx = _check_idx(op, idx, "base", base)
    validate.shape(op, "y", y, (idx.shape[0], base.shape[1]), "[K, D]")
    return _route_scatter(base.contiguous(), y.contiguous(), idx)
