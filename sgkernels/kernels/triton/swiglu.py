"""swiglu for the Triton backend, forward and backward; math: sgkernels.ops.swiglu.

fp32 inside the kernels, σ = sigmoid(a) written with tl.exp. a and b are [M, H] with a contiguous
last dim; their row stride may be 2H (the two halves of one [M, 2H] projection), so no split copy
is made; da and db are written in place and may be the halves of one [M, 2H] gradient. Programs
tile [BLOCK_M, BLOCK_H].
"""
import torch
import triton
import triton.language as tl

from .launch import Autotuned, tile, tile_grid


@triton.jit
def _gate_tile(A, B, M, H, stride_a, stride_b, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """The program's `tile`: (r [BLOCK_M, 1] int64, c [1, BLOCK_H], mask, a, b fp32, σ(a))."""
    rows, cols, _, mask = tile(M, H, BLOCK_M, BLOCK_H)
    r, c = rows[:, None].to(tl.int64), cols[None, :]
    a = tl.load(A + r * stride_a + c, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + r * stride_b + c, mask=mask, other=0.0).to(tl.float32)
    return r, c, mask, a, b, 1.0 / (1.0 + tl.exp(-a))


@triton.jit(do_not_specialize=["M"])
def _swiglu_fwd_kernel(A, B, OUT, M, H, stride_a, stride_b, stride_o,
                       BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    r, c, mask, a, b, sig = _gate_tile(A, B, M, H, stride_a, stride_b, BLOCK_M, BLOCK_H)
    tl.store(OUT + r * stride_o + c, (a * sig * b).to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _swiglu_bwd_kernel(DOUT, A, B, DA, DB, M, H, stride_do, stride_a, stride_b, stride_da,
                       stride_db, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    r, c, mask, a, b, sig = _gate_tile(A, B, M, H, stride_a, stride_b, BLOCK_M, BLOCK_H)
    dout = tl.load(DOUT + r * stride_do + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(DB + r * stride_db + c, (dout * (a * sig)).to(DB.dtype.element_ty), mask=mask)
    da = dout * b * sig * (1.0 + a * (1.0 - sig))
    tl.store(DA + r * stride_da + c, da.to(DA.dtype.element_ty), mask=mask)


_CONFIGS = [({"BLOCK_M": m, "BLOCK_H": h}, w, 1)
            for m, h, w in ((1, 1024, 4), (4, 512, 4), (8, 512, 8), (16, 256, 8), (4, 1024, 8))]
_INTERPRET_CONFIG = ({"BLOCK_M": 4, "BLOCK_H": 32}, 4, 1)
_fwd = Autotuned(_swiglu_fwd_kernel, _CONFIGS, ["H"], _INTERPRET_CONFIG)
_bwd = Autotuned(_swiglu_bwd_kernel, _CONFIGS, ["H"], _INTERPRET_CONFIG)


def swiglu_fwd(a, b):
    rows, hidden = a.shape
    out = torch.empty(rows, hidden, device=a.device, dtype=a.dtype)
    _fwd.launch(tile_grid(rows, hidden, "BLOCK_H"), rows, a, b, out, rows, hidden, a.stride(0),
           b.stride(0), out.stride(0))
    return out


def swiglu_bwd(dout, a, b, da, db):
    rows, hidden = a.shape
    _bwd.launch(tile_grid(rows, hidden, "BLOCK_H"), rows, dout, a, b, da, db, rows, hidden,
           dout.stride(0), a.stride(0), b.stride(0), da.stride(0), db.stride(0))


def static_specs():
    """bf16 halves of a [M, 2H] tensor, H = 5632 (≈ 8/3·2048, TR-DiT), aligned as at launch."""
    ptr, i32 = "*bf16", "i32"
    fwd = {"A": ptr, "B": ptr, "OUT": ptr, "M": i32, "H": i32, "stride_a": i32, "stride_b": i32,
           "stride_o": i32}
    bwd = {"DOUT": ptr, "A": ptr, "B": ptr, "DA": ptr, "DB": ptr, "M": i32, "H": i32,
           "stride_do": i32, "stride_a": i32, "stride_b": i32, "stride_da": i32, "stride_db": i32}
    return _fwd.specs(fwd, {}, list(fwd)) + _bwd.specs(bwd, {}, list(bwd))
