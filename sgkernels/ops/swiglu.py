"""SwiGLU gate (math: the docstring of swiglu).

`swiglu(a)` (b None) splits the last dim of a [..., 2H] into a[..., :H] and a[..., H:] without a
copy: the backend receives the two halves as strided views (row stride 2H), and the backward
allocates ONE [M, 2H] gradient whose halves the backend fills in place.

Roofline per call, M rows, H hidden channels, e bytes per element:
    fwd bytes 3·e·MH      FLOPs ≈ 5MH (exp counted as one)
    bwd bytes 5·e·MH      FLOPs ≈ 10MH
"""
import torch

from . import amp, dispatch, validate
from .custom import custom_op


@custom_op("sgkernels::swiglu")
def _swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return dispatch.get("swiglu_fwd", a.device)(a, b)


@_swiglu.register_fake
def _(a, b):
    return torch.empty_like(a)


@custom_op("sgkernels::swiglu_backward")
def _swiglu_backward(dout: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    da, db = torch.empty_like(a), torch.empty_like(b)
    dispatch.get("swiglu_bwd", a.device)(dout, a, b, da, db)
    return da, db


@_swiglu_backward.register_fake
def _(dout, a, b):
    return torch.empty_like(a), torch.empty_like(b)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grad(ctx, dout):
    a, b = ctx.saved_tensors
    return _swiglu_backward(dout.contiguous(), a, b)


_swiglu.register_autograd(_grad, setup_context=_setup)


def _halves(ab):
    hidden = ab.shape[-1] // 2
    return ab[:, :hidden], ab[:, hidden:]


@custom_op("sgkernels::swiglu_packed")
def _swiglu_packed(ab: torch.Tensor) -> torch.Tensor:
    a, b = _halves(ab)
    return dispatch.get("swiglu_fwd", ab.device)(a, b)


@_swiglu_packed.register_fake
def _(ab):
    return ab.new_empty(ab.shape[0], ab.shape[1] // 2)


@custom_op("sgkernels::swiglu_packed_backward")
def _swiglu_packed_backward(dout: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    dab = torch.empty_like(ab)
    dispatch.get("swiglu_bwd", ab.device)(dout, *_halves(ab), *_halves(dab))
    return dab


@_swiglu_packed_backward.register_fake
def _(dout, ab):
    return torch.empty_like(ab)


def _packed_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _packed_grad(ctx, dout):
    (ab,) = ctx.saved_tensors
    return _swiglu_packed_backward(dout.contiguous(), ab)


_swiglu_packed.register_autograd(_packed_grad, setup_context=_packed_setup)


def swiglu(a, b=None):
    """SwiGLU gate, elementwise, with σ = sigmoid(a):

        out = silu(a) · b = a · σ · b
    Gradients: da = dout · b · σ · (1 + a · (1 − σ)),   db = dout · a · σ.
    With b None, a is [..., 2H]: the gate is a[..., :H] and b = a[..., H:] (halves read in
    place, one [..., 2H] gradient).

    Args:
        a: any shape (at least 1-D), fp32, fp16 or bf16, on CPU or CUDA; [..., 2H] when b is
            None.
        b: the shape, dtype and device of a, or None.
        Under torch.autocast both are cast to the autocast dtype first.

    Returns:
        out: a's shape ([..., H] when b is None), in a's dtype, on a's device.

    Raises:
        TypeError: a or b not a tensor; a not fp32 / fp16 / bf16; b not in a's dtype.
        ValueError: a a scalar; b None and a's last dim odd; b not a's shape; b not on a's
            device.
    """
    op = "swiglu"
    a, b = amp.to_autocast_dtype(a, b)
    validate.floating(op, "a", a)
    if a.dim() == 0:
        raise ValueError(f"{op}: a must have at least 1 dim, got a scalar")
    if b is None:
        if a.shape[-1] % 2:
            raise ValueError(
                f"{op}: with b=None the last dim of a must be even ([..., 2H]), got {a.shape[-1]}"
            )
        ab = a.contiguous().reshape(-1, a.shape[-1])
        return _swiglu_packed(ab).reshape(*a.shape[:-1], a.shape[-1] // 2)
    validate.like(op, "b", b, "a", a)
    validate.shape(op, "b", b, a.shape, "of a")
    a2d = a.contiguous().reshape(-1, a.shape[-1])
    b2d = b.contiguous().reshape(-1, a.shape[-1])
    return _swiglu(a2d, b2d).reshape(a.shape)
