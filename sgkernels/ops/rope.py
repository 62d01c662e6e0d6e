"""Axial rotary position embedding for 2-D token grids (math: the docstring of rope_axial).

Roofline per call, e bytes per element: bytes 2·e·T·H·Dh + 8T (int32 pos); FLOPs ≈ 3·T·H·Dh
(sin/cos of T·Dh/2 angles not counted).
"""
import torch

from . import amp, dispatch, validate
from .custom import custom_op

POS_DTYPES = (torch.int32, torch.int64, torch.float32)


@custom_op("sgkernels::rope_axial")
def _rope_axial(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    return dispatch.get("rope_axial_fwd", x.device)(x, pos, theta)


@_rope_axial.register_fake
def _(x, pos, theta):
    return x.new_empty(x.shape)


@custom_op("sgkernels::rope_axial_backward")
def _rope_axial_backward(dy: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    return dispatch.get("rope_axial_bwd", dy.device)(dy, pos, theta)


@_rope_axial_backward.register_fake
def _(dy, pos, theta):
    return dy.new_empty(dy.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.theta = inputs[2]


def _grad(ctx, dy):
    (pos,) = ctx.saved_tensors
    return _rope_axial_backward(dense_heads(dy), pos, ctx.theta), None, None


_rope_axial.register_autograd(_grad, setup_context=_setup)


def dense_heads(t):
    """t [..., H, Dh] itself when its head and feature dims are dense (strides (·, Dh, 1); any
    outer strides: the backends read such tensors in place), else a contiguous copy."""
    heads, dim = t.shape[-2:]
    if (dim > 1 and t.stride(-1) != 1) or (heads > 1 and t.stride(-2) != dim):
        return t.contiguous()
    return t


def check_pos(op, x, pos, name="x"):
    """x [T, ..., Dh] with Dh % 4 == 0 and pos [T, 2] of POS_DTYPES on x's device (also used by
    ops.varlen_attention_qkv, whose rope rotates q and k by the same rule)."""
    if x.shape[-1] % 4:
        raise ValueError(f"{op}: {name} head dim Dh must be divisible by 4, got {x.shape[-1]}")
    validate.tensor(op, "pos", pos)
    if pos.dtype not in POS_DTYPES:
        raise TypeError(f"{op}: pos must have dtype int32, int64 or float32, got {pos.dtype}")
    validate.same_device(op, "pos", pos, name, x)
    validate.shape(op, "pos", pos, (x.shape[0], 2), "[T, 2]")


def rope_axial(x, pos, theta=10000.0):
    """Axial RoPE: rotate each head of token i by angles of its grid position pos[i] = (row, col).

    With h = Dh / 2, channels [0, h) rotate by the row pos[:, 0] and channels [h, Dh) by the
    column pos[:, 1]. Inside one half, channel j pairs with j + h/2 (rotate-half), with
    frequency f_j = theta^(-2j/h), j in [0, h/2), and angle a = pos · f_j:
        (x1, x2) -> (x1 · cos a − x2 · sin a,   x2 · cos a + x1 · sin a)
    Gradient: the same rotation by −a applied to dy.

    Args:
        x: [T, H, Dh] with Dh % 4 == 0, fp32, fp16 or bf16, on CPU or CUDA (cast to the
            autocast dtype under torch.autocast). With dense heads and features (strides
            (·, Dh, 1)) it is read in place whatever its token stride, e.g. q of a
            [T, 3, H, Dh] qkv; otherwise copied.
        pos: [T, 2] int32, int64 or fp32 on x's device: (row, col) of each token.
        theta: the frequency base.

    Returns:
        y: [T, H, Dh] in x's dtype, on x's device (a new contiguous tensor).

    Raises:
        TypeError: x or pos not a tensor; x not fp32 / fp16 / bf16; pos not int32 / int64 /
            fp32.
        ValueError: x not 3-D; Dh not divisible by 4; pos not [T, 2] or not on x's device.
    """
    op = "rope_axial"
    (x,) = amp.to_autocast_dtype(x)
    validate.floating(op, "x", x)
    validate.ndim(op, "x", x, 3)
    check_pos(op, x, pos)
    return _rope_axial(dense_heads(x), pos.contiguous(), float(theta))
