"""gated_residual for the Triton backend, forward and backward; math: sgkernels.ops.residual.

fp32 inside the kernels; seg [T] non-decreasing. The forward tiles [T, D] and is autotuned on
GPU. The backward runs one program per reduction item (≤ R rows inside one segment,
segments.py): it writes dy and an fp32 partial row of dgate, which `segment_sum` adds in a fixed
order; its launch config is a fixed function of D (not autotuned), so dgate is bitwise
repeatable. dx is dout itself (returned as is). Under TRITON_INTERPRET=1 every kernel runs one
small fixed config. Bytes beyond the op's roofline: the fp32 partials, (T/R + S)·D·4, written
and read once.
"""
import torch
import triton
import triton.language as tl

from .launch import INTERPRET, Autotuned, ast_spec, tile, tile_grid
from .segments import plan_item, rows_per_item, segment_plan, segment_sum


@triton.jit(do_not_specialize=["T"])
def _gated_residual_fwd_kernel(X, Y, GATE, SEG, OUT, T, D, stride_x, stride_y, stride_g, stride_o,
                               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, row_ok, mask = tile(T, D, BLOCK_M, BLOCK_D)
    r64 = rows[:, None].to(tl.int64)
    s = tl.load(SEG + rows, mask=row_ok, other=0)
    x = tl.load(X + r64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + r64 * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GATE + s[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + r64 * stride_o + cols[None, :], (x + g * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd_kernel(DOUT, Y, GATE, DY, PGATE, ITEM_START, ITEM_END, ITEM_SEG, R, D,
                               stride_do, stride_y, stride_g, stride_dy, stride_p,
                               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (item, column block): dy rows of the item, fp32 partial of dgate."""
    item = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    start, end, s = plan_item(ITEM_START, ITEM_END, ITEM_SEG, item)
    g = tl.load(GATE + s * stride_g + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_M):
        rows = start + r0 + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & col_ok[None, :]
        r64 = rows[:, None].to(tl.int64)
        dout = tl.load(DOUT + r64 * stride_do + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + r64 * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DY + r64 * stride_dy + cols[None, :], (dout * g[None, :]).to(DY.dtype.element_ty),
                 mask=mask)
        acc += tl.sum(dout * y, 0)
    tl.store(PGATE + item.to(tl.int64) * stride_p + cols, acc, mask=col_ok)


_CONFIGS = [({"BLOCK_M": m, "BLOCK_D": d}, w, 1)
            for m, d, w in ((4, 256, 4), (8, 256, 4), (16, 256, 8), (4, 512, 4), (8, 512, 8))]
_FIXED = {"BLOCK_M": 2, "BLOCK_D": 64, "num_warps": 4}  # R = 4 rows per item: 2 iterations
_fwd = Autotuned(_gated_residual_fwd_kernel, _CONFIGS, ["D"],
                 ({"BLOCK_M": 2, "BLOCK_D": 64}, 4, 1))


def _bwd_config(dim):
    """Fixed, not autotuned: the tile sets the dgate summation order (bitwise reproducible)."""
    if INTERPRET:
        return _FIXED
    return {"BLOCK_M": 4, "BLOCK_D": min(512, triton.next_power_of_2(dim)), "num_warps": 4}


def gated_residual_fwd(x, y, gate, seg):
    total, dim = x.shape
    out = torch.empty_like(x)
    _fwd.launch(tile_grid(total, dim), total, x, y, gate, seg, out, total, dim, x.stride(0),
           y.stride(0), gate.stride(0), out.stride(0))
    return out


def gated_residual_bwd(dout, y, gate, seg):
    """(dout, dy, dgate); dx is `dout` itself, as in the reference: do not write into it."""
    total, dim = dout.shape
    per_item = rows_per_item(total, dout.device)
    plan = segment_plan(seg, gate.shape[0], per_item)
    items = plan["start"].shape[0]
    dy = torch.empty_like(y)
    partials = torch.empty(items, dim, device=dout.device, dtype=torch.float32)
    config = _bwd_config(dim)
    grid = (items, triton.cdiv(dim, config["BLOCK_D"]))
    _gated_residual_bwd_kernel[grid](dout, y, gate, dy, partials, plan["start"], plan["end"],
                                     plan["seg"], per_item, dim, dout.stride(0), y.stride(0),
                                     gate.stride(0), dy.stride(0), partials.stride(0), **config)
    dgate = segment_sum(partials, plan["first"], plan["last"], gate.dtype)
    return dout, dy, dgate


def static_specs():
    """bf16, D = 1152 (SiT-XL) specializations as a real launch sees them (aligned rows)."""
    ptr, i32 = "*bf16", "i32"
    fwd_sig = {"X": ptr, "Y": ptr, "GATE": ptr, "SEG": "*i32", "OUT": ptr, "T": i32, "D": i32,
               "stride_x": i32, "stride_y": i32, "stride_g": i32, "stride_o": i32}
    bwd_sig = {"DOUT": ptr, "Y": ptr, "GATE": ptr, "DY": ptr, "PGATE": "*fp32",
               "ITEM_START": "*i32", "ITEM_END": "*i32", "ITEM_SEG": "*i32", "R": i32, "D": i32,
               "stride_do": i32, "stride_y": i32, "stride_g": i32, "stride_dy": i32,
               "stride_p": i32}
    config = dict(_bwd_config(1152))
    warps = config.pop("num_warps")
    return [*_fwd.specs(fwd_sig, {}, list(fwd_sig)),
            ast_spec(_gated_residual_bwd_kernel, bwd_sig, config, list(bwd_sig), warps)]
