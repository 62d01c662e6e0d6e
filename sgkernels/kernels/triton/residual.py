"""Triton gated residual of adaLN-Zero, and the deterministic per-segment reductions it shares.

Math (fp32 inside the kernels, seg [T] non-decreasing, gate [S, D]):
    forward   out = x + gate[seg]·y
    backward  dx = dout (returned as is, like the reference), dy = dout·gate[seg],
              dgate[s] = Σ_{t: seg[t]=s} dout[t]·y[t]

Deterministic segment sums (no float atomics), used here and by norm.py (dshift, dscale, dweight):
`segment_plan` cuts every segment into *items* of at most R rows (an item never crosses a segment
boundary), entirely on device: segment bounds by `torch.searchsorted` on the sorted `seg`, item ->
segment by a second searchsorted on the cumulative item counts, so there is no host sync and the
item count is the static bound cdiv(T, R) + S (surplus items are empty). Stage 1: one program per
item reduces its rows into a fp32 partial row. Stage 2 (`_segment_sum_kernel`): one program per
(segment, column block) adds the partials of the segment's items in a fixed order. Stage 1 runs
with a launch config that is a fixed function of D (not autotuned), so the summation order, and
every gradient bit, is the same in every process on a given GPU model; the elementwise forward is
autotuned on GPU. Under TRITON_INTERPRET=1 every kernel runs one small fixed config.

Roofline (bytes per call, b = bytes per element): forward reads x, y and writes out: 3·T·D·b
(+ gate rows, S·D·b, cached). Backward reads dout, y and writes dy: 3·T·D·b, plus the fp32
partials (T/R + S)·D·4 written and read once.
"""
import functools
import os

import torch
import triton
import triton.language as tl
from triton.compiler import ASTSource

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def ast_spec(kernel, signature, constexprs, aligned, num_warps):
    """(name, ASTSource, options) as a real launch specializes `kernel`: the parameters named
    in `aligned` (pointers to 16-byte aligned data, integers divisible by 16) get
    tt.divisibility 16, so the compiler can prove the alignment that 128-bit accesses need."""
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    full = {**signature, **{name: "constexpr" for name in constexprs}}
    src = ASTSource(fn=kernel, signature=full, constexprs=constexprs, attrs=attrs)
    return kernel.__name__, src, {"num_warps": num_warps}


def tuned(kernel, configs, key, prune=None):
    """`kernel` autotuned over `configs` (keyed on the arguments `key`, optional early pruning) on
    GPU; the plain kernel under the interpreter, where autotuning does not work (callers then pass
    a fixed config themselves)."""
    if INTERPRET:
        return kernel
    prune_by = {"early_config_prune": prune} if prune is not None else None
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_by)(kernel)


def rows_per_item(total_rows, device):
    """Rows R of one reduction item: few under the interpreter (so tests split segments), else
    enough items for ~4 programs per SM."""
    if device.type != "cuda":
        return 4
    return min(256, max(16, triton.next_power_of_2(triton.cdiv(total_rows, 4 * _sms(device)))))


@functools.lru_cache(maxsize=None)
def _sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def segment_plan(seg, num_segments, rows):
    """Items of at most `rows` rows per segment -> dict of int32 tensors:
    start, end, seg [W] (item row range and segment; empty items have start = end = 0) and
    first, last [S] (item range of each segment); W = cdiv(T, rows) + S."""
    total, device = seg.shape[0], seg.device
    ids = torch.arange(num_segments, device=device, dtype=seg.dtype)
    seg_start = torch.searchsorted(seg, ids)
    seg_end = torch.searchsorted(seg, ids, right=True)
    counts = (seg_end - seg_start + rows - 1) // rows
    last = torch.cumsum(counts, 0)
    first = last - counts
    items = torch.arange(triton.cdiv(total, rows) + num_segments, device=device)
    item_seg = torch.searchsorted(last, items, right=True)
    active = item_seg < num_segments
    s = item_seg.clamp(max=num_segments - 1)
    start = seg_start[s] + (items - first[s]) * rows
    end = torch.minimum(start + rows, seg_end[s])
    i32 = torch.int32
    return {"start": torch.where(active, start, 0).to(i32),
            "end": torch.where(active, end, 0).to(i32),
            "seg": s.to(i32), "first": first.to(i32), "last": last.to(i32)}


@triton.jit
def _segment_sum_kernel(P, OUT, FIRST, LAST, D, stride_p, stride_o,
                        BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[s, cols] = Σ_{i in [FIRST[s], LAST[s])} P[i, cols], in item order (fp32)."""
    s = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    first = tl.load(FIRST + s)
    last = tl.load(LAST + s)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    i = first
    while i < last:  # bounds loaded from memory; a while loop compiles and interprets alike
        items = i + tl.arange(0, BLOCK_I)
        ptrs = P + items[:, None].to(tl.int64) * stride_p + cols[None, :]
        acc += tl.sum(tl.load(ptrs, mask=(items < last)[:, None] & col_ok[None, :], other=0.0), 0)
        i += BLOCK_I
    tl.store(OUT + s * stride_o + cols, acc.to(OUT.dtype.element_ty), mask=col_ok)


def segment_sum(partials, first, last, dtype):
    """partials [W, D] fp32 -> [S, D] `dtype`; row s sums the item rows [first[s], last[s])."""
    dim = partials.shape[1]
    out = torch.empty(first.shape[0], dim, device=partials.device, dtype=dtype)
    block_d = min(256, triton.next_power_of_2(dim))
    grid = (first.shape[0], triton.cdiv(dim, block_d))
    _segment_sum_kernel[grid](partials, out, first, last, dim, partials.stride(0), out.stride(0),
                              BLOCK_I=8, BLOCK_D=block_d, num_warps=4)
    return out


def column_sum(partials, dtype):
    """partials [W, D] fp32 -> [D] `dtype`: Σ over all rows, deterministic."""
    # [0, W] made on device: no host-to-device copy, so no sync and CUDA-graph capturable
    bounds = torch.arange(2, device=partials.device, dtype=torch.int32) * partials.shape[0]
    return segment_sum(partials, bounds[:1], bounds[1:], dtype)[0]


@triton.jit
def _gated_residual_fwd_kernel(X, Y, GATE, SEG, OUT, T, D, stride_x, stride_y, stride_g, stride_o,
                               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < T
    mask = row_ok[:, None] & (cols < D)[None, :]
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
    start = tl.load(ITEM_START + item)
    end = tl.load(ITEM_END + item)
    s = tl.load(ITEM_SEG + item)
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


_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_D": d}, num_warps=w)
            for m, d, w in ((4, 256, 4), (8, 256, 4), (16, 256, 8), (4, 512, 4), (8, 512, 8))]
_FIXED = {"BLOCK_M": 2, "BLOCK_D": 64, "num_warps": 4}  # R = 4 rows per item: 2 iterations
_fwd = tuned(_gated_residual_fwd_kernel, _CONFIGS, key=["D"])


def _launch(kernel, grid, *args):
    kernel[grid](*args, **(_FIXED if INTERPRET else {}))


def _bwd_config(dim):
    """Fixed, not autotuned: the tile sets the dgate summation order (bitwise reproducible)."""
    if INTERPRET:
        return _FIXED
    return {"BLOCK_M": 4, "BLOCK_D": min(512, triton.next_power_of_2(dim)), "num_warps": 4}


def gated_residual_fwd(x, y, gate, seg):
    total, dim = x.shape
    out = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK_M"]), triton.cdiv(dim, meta["BLOCK_D"]))
    _launch(_fwd, grid, x, y, gate, seg, out, total, dim, x.stride(0), y.stride(0), gate.stride(0),
            out.stride(0))
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
    sum_sig = {"P": "*fp32", "OUT": ptr, "FIRST": "*i32", "LAST": "*i32", "D": i32,
               "stride_p": i32, "stride_o": i32}
    return [
        ast_spec(_gated_residual_fwd_kernel, fwd_sig, {"BLOCK_M": 8, "BLOCK_D": 256},
                 [n for n in fwd_sig if n != "T"], num_warps=4),
        ast_spec(_gated_residual_bwd_kernel, bwd_sig, {"BLOCK_M": 4, "BLOCK_D": 512},
                 [n for n in bwd_sig if n != "R"], num_warps=4),
        ast_spec(_segment_sum_kernel, sum_sig, {"BLOCK_I": 8, "BLOCK_D": 256}, list(sum_sig),
                 num_warps=4),
    ]
