"""route_gather and route_scatter for the Triton backend, forward and backward; math:
sgkernels.ops.routing (gather's backward is route_scatter of dout onto zeros, composed by the ops
layer).

idx [K] unique, int32 or int64. The scatter kernels run over the T output rows with an inverse map
inv[t] = k (or −1), built on device with one index_copy (idx is unique, so it is deterministic):
every output row is written exactly once and the base rows that get replaced are never read.
Programs tile [BLOCK_M rows, BLOCK_D columns]. Bytes beyond the op's roofline: the int32
inverse map inv [T].
"""
import torch
import triton
import triton.language as tl

from .launch import Autotuned, tile, tile_grid


@triton.jit(do_not_specialize=["K"])
def _route_gather_fwd_kernel(X, IDX, OUT, K, D, stride_x, stride_o,
                             BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, row_ok, mask = tile(K, D, BLOCK_M, BLOCK_D)
    src = tl.load(IDX + rows, mask=row_ok, other=0).to(tl.int64)  # int32 idx: no overflow
    x = tl.load(X + src[:, None] * stride_x + cols[None, :], mask=mask)
    tl.store(OUT + rows[:, None].to(tl.int64) * stride_o + cols[None, :], x, mask=mask)


@triton.jit
def _scatter_tile(INV, T, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The program's `tile` of the T output rows: (r64 [BLOCK_M, 1], cols, mask, k [BLOCK_M]
    (row of y written there, or −1), routed [BLOCK_M, 1] (k ≥ 0))."""
    rows, cols, row_ok, mask = tile(T, D, BLOCK_M, BLOCK_D)
    k = tl.load(INV + rows, mask=row_ok, other=-1)
    return rows[:, None].to(tl.int64), cols, mask, k, (k >= 0)[:, None]


@triton.jit(do_not_specialize=["T"])
def _route_scatter_fwd_kernel(BASE, Y, INV, OUT, T, D, stride_b, stride_y, stride_o,
                              BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    r64, cols, mask, k, routed = _scatter_tile(INV, T, D, BLOCK_M, BLOCK_D)
    base = tl.load(BASE + r64 * stride_b + cols[None, :], mask=mask & ~routed)
    y = tl.load(Y + k[:, None].to(tl.int64) * stride_y + cols[None, :], mask=mask & routed)
    tl.store(OUT + r64 * stride_o + cols[None, :], tl.where(routed, y, base), mask=mask)


@triton.jit(do_not_specialize=["T"])
def _route_scatter_bwd_kernel(DOUT, INV, DBASE, DY, T, D, stride_do, stride_db, stride_dy,
                              BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    r64, cols, mask, k, routed = _scatter_tile(INV, T, D, BLOCK_M, BLOCK_D)
    dout = tl.load(DOUT + r64 * stride_do + cols[None, :], mask=mask)
    tl.store(DBASE + r64 * stride_db + cols[None, :], tl.where(routed, tl.zeros_like(dout), dout),
             mask=mask)
    tl.store(DY + k[:, None].to(tl.int64) * stride_dy + cols[None, :], dout, mask=mask & routed)


_CONFIGS = [({"BLOCK_M": m, "BLOCK_D": d}, w, 1)
            for m, d, w in ((1, 1024, 4), (4, 512, 4), (8, 256, 4), (8, 512, 8), (16, 256, 8))]
_INTERPRET_CONFIG = ({"BLOCK_M": 4, "BLOCK_D": 32}, 4, 1)
_gather = Autotuned(_route_gather_fwd_kernel, _CONFIGS, ["D"], _INTERPRET_CONFIG)
_scatter = Autotuned(_route_scatter_fwd_kernel, _CONFIGS, ["D"], _INTERPRET_CONFIG)
_scatter_bwd = Autotuned(_route_scatter_bwd_kernel, _CONFIGS, ["D"], _INTERPRET_CONFIG)


def _inverse(idx, total):
    """inv [T] int32: inv[idx[k]] = k, −1 for rows that are not routed (idx int32 or int64)."""
    inv = torch.full((total,), -1, device=idx.device, dtype=torch.int32)
    rows = torch.arange(idx.shape[0], device=idx.device, dtype=torch.int32)
    return inv.index_copy_(0, idx.long(), rows)


def route_gather_fwd(x, idx):
    kept, dim = idx.shape[0], x.shape[1]
    out = torch.empty(kept, dim, device=x.device, dtype=x.dtype)
    _gather.launch(tile_grid(kept, dim), kept, x, idx, out, kept, dim, x.stride(0),
           out.stride(0))
    return out


def route_scatter_fwd(base, y, idx):
    total, dim = base.shape
    out = torch.empty_like(base)
    _scatter.launch(tile_grid(total, dim), total, base, y, _inverse(idx, total), out, total, dim,
           base.stride(0), y.stride(0), out.stride(0))
    return out


def route_scatter_bwd(dout, idx):
    total, dim = dout.shape
    dbase = torch.empty_like(dout)
    dy = torch.empty(idx.shape[0], dim, device=dout.device, dtype=dout.dtype)
    _scatter_bwd.launch(tile_grid(total, dim), total, dout, _inverse(idx, total), dbase, dy,
           total, dim, dout.stride(0), dbase.stride(0), dy.stride(0))
    return dbase, dy


def static_specs():
    """bf16 rows of D = 1152 (SiT-XL), aligned as at a real launch."""
    ptr, i32 = "*bf16", "i32"
    gather = {"X": ptr, "IDX": "*i64", "OUT": ptr, "K": i32, "D": i32, "stride_x": i32,
              "stride_o": i32}
    scatter = {"BASE": ptr, "Y": ptr, "INV": "*i32", "OUT": ptr, "T": i32, "D": i32,
               "stride_b": i32, "stride_y": i32, "stride_o": i32}
    scatter_bwd = {"DOUT": ptr, "INV": "*i32", "DBASE": ptr, "DY": ptr, "T": i32, "D": i32,
                   "stride_do": i32, "stride_db": i32, "stride_dy": i32}
    return [spec for entry, sig in ((_gather, gather), (_scatter, scatter),
                                    (_scatter_bwd, scatter_bwd))
            for spec in entry.specs(sig, {}, list(sig))]
