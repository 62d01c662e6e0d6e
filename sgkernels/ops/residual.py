"""Gated residual of adaLN-Zero (math: the docstring of gated_residual).

Roofline per call, T rows of D channels, e bytes per element, S segments (seg int32):
    fwd bytes e·(3TD + SD) + 4T      FLOPs 2TD
    bwd bytes e·(3TD + 2SD) + 4T     FLOPs 3TD   (dx is dout itself, no copy)
"""
import torch

from . import amp, dispatch, validate
from .custom import custom_op


@custom_op("sgkernels::gated_residual")
def _gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    validate.seg_values("gated_residual", seg, gate.shape[0])
    return dispatch.get("gated_residual_fwd", x.device)(x, y, gate, seg)


@_gated_residual.register_fake
def _(x, y, gate, seg):
    return torch.empty_like(x)


@custom_op("sgkernels::gated_residual_backward")
def _gated_residual_backward(
    dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, seg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dgate); dx = dout is passed through by the autograd formula, not by this op
    (a custom op may not return an alias of its input)."""
    _, dy, dgate = dispatch.get("gated_residual_bwd", y.device)(dout, y, gate, seg)
    return dy, dgate


@_gated_residual_backward.register_fake
def _(dout, y, gate, seg):
    return torch.empty_like(y), torch.empty_like(gate)


def _setup(ctx, inputs, output):
    _, y, gate, seg = inputs
    ctx.save_for_backward(y, gate, seg)


def _grad(ctx, dout):
    y, gate, seg = ctx.saved_tensors
    dout = dout.contiguous()
    dy, dgate = _gated_residual_backward(dout, y, gate, seg)
    return dout, dy, dgate, None


_gated_residual.register_autograd(_grad, setup_context=_setup)


def gated_residual(x, y, gate, seg):
    """Gated residual of adaLN-Zero: token i adds y scaled by the gate of its segment seg[i].

        out = x + gate[seg] · y
    Gradients: dx = dout, dy = dout · gate[seg], dgate = Σ_seg dout · y (deterministic sum).

    Args:
        x: [T, D] fp32, fp16 or bf16, on CPU or CUDA (the residual stream).
        y: [T, D] (the branch output).
        gate: [S, D], one row per segment.
        seg: [T] int32, values in [0, S), non-decreasing (tokens grouped by segment).
        y and gate are in x's dtype (under torch.autocast they are cast to it); every tensor
        is on x's device.

    Returns:
        out: [T, D] in x's dtype, on x's device.

    Raises:
        TypeError: an argument not a tensor; x not fp32 / fp16 / bf16; y or gate not in x's
            dtype; seg not int32.
        ValueError: x not 2-D; y not x's shape; gate not [S, D]; seg not [T]; a tensor not on
            x's device; seg values outside [0, S) or decreasing (checked on CPU, and on CUDA
            under SGKERNELS_DEBUG=1).
    """
    op = "gated_residual"
    validate.floating(op, "x", x)
    y, gate = amp.like(x, y, gate)
    validate.ndim(op, "x", x, 2)
    validate.like(op, "y", y, "x", x)
    validate.shape(op, "y", y, x.shape, "[T, D] (the shape of x)")
    validate.like(op, "gate", gate, "x", x)
    validate.ndim(op, "gate", gate, 2)
    validate.shape(op, "gate", gate, (gate.shape[0], x.shape[1]), "[S, D]")
    validate.index(op, "seg", seg, "x", x, dtypes=(torch.int32,))
    validate.shape(op, "seg", seg, (x.shape[0],), "[T]")
    return _gated_residual(x.contiguous(), y.contiguous(), gate.contiguous(), seg.contiguous())
