"""route_gather_rms_norm_modulate (the fused route start) for the Triton backend, forward and
backward; math: sgkernels.ops.route_norm.

The kernels run norm.py's modulated-norm rows with GATHER: the forward reads row idx[k] of x once
and writes it to h[k] as well as y[k]; the backward adds dh[k] to row k's gradient and stores it
at dx row idx[k] (dx starts as zeros), with dweight/dshift/dscale reduced as in norm.py. Tiles,
autotuning and the fixed backward launch are norm.py's.
"""
import torch
import triton
import triton.language as tl

from .norm import autotuned_rows, modulate_bwd, modulate_bwd_sums, modulate_fwd, row_grid, row_specs


@triton.jit(do_not_specialize=["K"])
def _route_gather_rms_norm_modulate_fwd_kernel(X, IDX, W, SHIFT, SCALE, SEG, H, Y, RSTD, K, D,
                                               stride_x, stride_h, stride_y, stride_s, eps,
                                               HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr,
                                               BLOCK_D: tl.constexpr):
    modulate_fwd(X, IDX, W, SHIFT, SCALE, SEG, H, Y, RSTD, K, D, stride_x, stride_h, stride_y,
                 stride_s, eps, HAS_WEIGHT, True, BLOCK_M, BLOCK_D)


@triton.jit
def _route_gather_rms_norm_modulate_bwd_kernel(DY, H, W, SCALE, RSTD, DX, IDX, DH, PW, PMOD,
                                               ITEM_START, ITEM_END, ITEM_SEG, R, D, stride_dy,
                                               stride_h, stride_dx, stride_dh, stride_s,
                                               stride_pw, stride_pb, stride_p,
                                               HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr,
                                               BLOCK_D: tl.constexpr):
    modulate_bwd(DY, H, W, SCALE, RSTD, DX, IDX, DH, PW, PMOD, ITEM_START, ITEM_END, ITEM_SEG, R,
                 D, stride_dy, stride_h, stride_dx, stride_dh, stride_s, stride_pw, stride_pb,
                 stride_p, HAS_WEIGHT, True, BLOCK_M, BLOCK_D)


_gather_mod_fwd = autotuned_rows(_route_gather_rms_norm_modulate_fwd_kernel)


def route_gather_rms_norm_modulate_fwd(x, idx, weight, shift, scale, seg, eps):
    """x [T, D]; idx [K] int32/int64 unique; seg [K] int32, the non-decreasing segments of the
    kept rows. Returns (h [K, D], y [K, D], rstd [K] fp32)."""
    kept, dim = idx.shape[0], x.shape[1]
    h = torch.empty(kept, dim, device=x.device, dtype=x.dtype)
    y = torch.empty_like(h)
    rstd = torch.empty(kept, device=x.device, dtype=torch.float32)
    _gather_mod_fwd.launch(row_grid(kept), kept, x, idx, weight, shift, scale, seg, h, y, rstd,
           kept, dim, x.stride(0), h.stride(0), y.stride(0), shift.stride(0), float(eps),
           HAS_WEIGHT=weight is not None, BLOCK_D=triton.next_power_of_2(dim))
    return h, y, rstd


def route_gather_rms_norm_modulate_bwd(dh, dy, h, idx, weight, scale, seg, rstd, total):
    """dh: the gradient reaching h from its other uses. Returns (dx [total, D], dweight | None,
    dshift, dscale)."""
    dx = torch.zeros(total, h.shape[1], device=h.device, dtype=h.dtype)
    sums = modulate_bwd_sums(_route_gather_rms_norm_modulate_bwd_kernel,
                             (dy, h, weight, scale, rstd, dx, idx, dh),
                             (dy.stride(0), h.stride(0), dx.stride(0), dh.stride(0),
                              scale.stride(0)), h, weight, scale, seg)
    return (dx, *sums)


def static_specs():
    """The fused route start's kernels at every width of norm.SPEC_DIMS (`norm.row_specs`)."""
    ptr, i32 = "*bf16", "i32"
    gather_fwd = {"X": ptr, "IDX": "*i64", "W": ptr, "SHIFT": ptr, "SCALE": ptr, "SEG": "*i32",
                  "H": ptr, "Y": ptr, "RSTD": "*fp32", "K": i32, "D": i32, "stride_x": i32,
                  "stride_h": i32, "stride_y": i32, "stride_s": i32, "eps": "fp32"}
    gather_bwd = {"DY": ptr, "H": ptr, "W": ptr, "SCALE": ptr, "RSTD": "*fp32", "DX": ptr,
                  "IDX": "*i64", "DH": ptr, "PW": "*fp32", "PMOD": "*fp32", "ITEM_START": "*i32",
                  "ITEM_END": "*i32", "ITEM_SEG": "*i32", "R": i32, "D": i32, "stride_dy": i32,
                  "stride_h": i32, "stride_dx": i32, "stride_dh": i32, "stride_s": i32,
                  "stride_pw": i32, "stride_pb": i32, "stride_p": i32}
    return row_specs([(_gather_mod_fwd, gather_fwd)],
                     [(_route_gather_rms_norm_modulate_bwd_kernel, gather_bwd)])
