"""CUDA C++ backend of sgkernels.ops: thin wrappers over ``torch.ops.sgkernels_C``.

The kernels live in ``csrc/`` (one ``.cu`` per op: norm, residual, swiglu, routing; math:
sgkernels.ops.<op>) and are built as the extension ``sgkernels._C``
(``pip install --no-build-isolation .`` with a CUDA torch and nvcc). They implement the
memory-bound ops; every function here has the name and signature of its counterpart in
``sgkernels.kernels.torch`` (docs/contracts.md, "Backends"). One module: the bindings are too
thin to split per op.

Statistics and sums in fp32; weight / segment gradients are reduced deterministically.
The norms and gated_residual's backward keep a row in registers and support rows of up to
``MAX_ROW_DIM`` elements; wider rows go to the Triton backend (a sibling, same layer).
"""
from __future__ import annotations

import functools

import torch

# Keep equal to SGK_MAX_ROW_DIM in csrc/sgk_kernels.h.
MAX_ROW_DIM = 4096

__all__ = [
    "MAX_ROW_DIM",
    "available",
    "gated_residual_bwd",
    "gated_residual_fwd",
    "rms_norm_bwd",
    "rms_norm_fwd",
    "rms_norm_modulate_bwd",
    "rms_norm_modulate_fwd",
    "route_gather_fwd",
    "route_scatter_bwd",
    "route_scatter_fwd",
    "swiglu_bwd",
    "swiglu_fwd",
    "unavailable_reason",
]


@functools.cache
def _load_error() -> str | None:
    """Import sgkernels._C (registering torch.ops.sgkernels_C); the reason if it fails."""
    try:
        from sgkernels import _C  # noqa: F401
    except (ImportError, OSError) as err:
        return f"sgkernels._C could not be imported ({err}); build it with " \
               "`pip install --no-build-isolation .` using a CUDA build of torch and nvcc"
    return None


def unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    reason = _load_error()
    if reason is None and not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is False"
    return reason


def available() -> bool:
    """True iff sgkernels._C imports and a CUDA device is usable."""
    return unavailable_reason() is None


def _ops():
    reason = _load_error()
    if reason is not None:
        raise RuntimeError(reason)
    return torch.ops.sgkernels_C


def _wide_rows():
    """The backend for rows wider than MAX_ROW_DIM: Triton (imported on first use)."""
    from sgkernels.kernels import triton

    return triton


def rms_norm_fwd(x2d, weight, eps):
    if x2d.shape[-1] > MAX_ROW_DIM:
        return _wide_rows().rms_norm_fwd(x2d, weight, eps)
    return _ops().rms_norm_fwd(x2d, weight, float(eps))


def rms_norm_bwd(dy, x2d, weight, rstd):
    if x2d.shape[-1] > MAX_ROW_DIM:
        return _wide_rows().rms_norm_bwd(dy, x2d, weight, rstd)
    dx, dweight = _ops().rms_norm_bwd(dy, x2d, weight, rstd)
    return dx, (dweight if weight is not None else None)


def rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps):
    if x.shape[-1] > MAX_ROW_DIM:
        return _wide_rows().rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps)
    return _ops().rms_norm_modulate_fwd(x, weight, shift, scale, seg, float(eps))


def rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd):
    if x.shape[-1] > MAX_ROW_DIM:
        return _wide_rows().rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd)
    dx, dweight, dshift, dscale = _ops().rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd)
    return dx, (dweight if weight is not None else None), dshift, dscale


def gated_residual_fwd(x, y, gate, seg):
    return _ops().gated_residual_fwd(x, y, gate, seg)


def gated_residual_bwd(dout, y, gate, seg):
    if dout.shape[-1] > MAX_ROW_DIM:
        return _wide_rows().gated_residual_bwd(dout, y, gate, seg)
    dy, dgate = _ops().gated_residual_bwd(dout, y, gate, seg)
    return dout, dy, dgate  # dx is the identity of dout, as in the reference


def swiglu_fwd(a, b):
    return _ops().swiglu_fwd(a, b)


def swiglu_bwd(dout, a, b, da, db):
    _ops().swiglu_bwd(dout, a, b, da, db)


def route_gather_fwd(x, idx):
    return _ops().route_gather_fwd(x, idx)


def route_scatter_fwd(base, y, idx):
    return _ops().route_scatter_fwd(base, y, idx)


def route_scatter_bwd(dout, idx):
    dbase, dy = _ops().route_scatter_bwd(dout, idx)
    return dbase, dy
