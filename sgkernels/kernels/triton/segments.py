"""Deterministic per-segment and per-column sums of the Triton backward kernels (no float atomics).

Used for dgate (residual.py) and dweight, dshift, dscale (norm.py, route_norm.py):
    out[s] = Σ_{t: seg[t] = s} v[t]        (seg [T] non-decreasing, v [T, D] computed in a kernel)

`segment_plan` cuts every segment into *items* of at most R rows (an item never crosses a segment
boundary), entirely on device: segment bounds by `torch.searchsorted` on the sorted `seg`, item ->
segment by a second searchsorted on the cumulative item counts, so there is no host sync and the
item count is the static bound W = cdiv(T, R) + S (surplus items are empty). Stage 1 (in the
caller's kernel): one program per item reduces its rows into an fp32 partial row. Stage 2
(`segment_sum`): one program per (segment, column block) adds the partials of the segment's items
in a fixed order. Callers launch stage 1 with a config that is a fixed function of D (not
autotuned), so the summation order, and every gradient bit, is the same in every process on a
given GPU model.

Every block of a model shares one `seg` tensor, so the plan of a forward pass is built once: it is
cached on the identity of `seg` (a weak reference: the plan dies with seg) together with seg's
version counter, data pointer, length, S and R, so an in-place write to seg, a new tensor or new
sizes build a new plan. No cache for tensor subclasses (fake and functional tensors of
torch.compile), inference tensors, code being traced and CUDA graph capture (a plan read there
must be computed inside the graph).

Bytes: the fp32 partials, W·D·4, are written once and read once.
"""
import functools
import types

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from .launch import ast_spec


def rows_per_item(total_rows, device):
    """Rows R of one reduction item: few under the interpreter (so tests split segments), else
    enough items for ~4 programs per SM."""
    if device.type != "cuda":
        return 4
    return min(256, max(16, triton.next_power_of_2(triton.cdiv(total_rows, 4 * _sms(device)))))


@functools.lru_cache(maxsize=None)
def _sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


_PLANS = WeakIdKeyDictionary()  # seg -> (key, plan) of its last segment_plan


def _cacheable(seg):
    return (type(seg) is torch.Tensor and not seg.is_inference()
            and not torch.compiler.is_compiling()
            and not (seg.is_cuda and torch.cuda.is_current_stream_capturing()))


def segment_plan(seg, num_segments, rows):
    """Items of at most `rows` rows per segment -> dict of int32 tensors (read only):
    start, end, seg [W] (item row range and segment; empty items have start = end = 0) and
    first, last [S] (item range of each segment); W = cdiv(T, rows) + S. Cached per seg."""
    if not _cacheable(seg):
        return _build_plan(seg, num_segments, rows)
    key = (seg._version, seg.data_ptr(), seg.shape[0], num_segments, rows)
    cached = _PLANS.get(seg)
    if cached is None or cached[0] != key:
        cached = _PLANS[seg] = (key, _build_plan(seg, num_segments, rows))
    return cached[1]


def _build_plan(seg, num_segments, rows):
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
    return types.MappingProxyType({"start": torch.where(active, start, 0).to(i32),
                                   "end": torch.where(active, end, 0).to(i32), "seg": s.to(i32),
                                   "first": first.to(i32), "last": last.to(i32)})


@triton.jit
def plan_item(ITEM_START, ITEM_END, ITEM_SEG, item):
    """Stage 1: (start, end, segment) of reduction item `item` of a segment_plan."""
    return tl.load(ITEM_START + item), tl.load(ITEM_END + item), tl.load(ITEM_SEG + item)


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


def static_specs():
    """The stage-2 sum into bf16 rows of D = 1152 (SiT-XL), aligned as at a real launch."""
    sig = {"P": "*fp32", "OUT": "*bf16", "FIRST": "*i32", "LAST": "*i32", "D": "i32",
           "stride_p": "i32", "stride_o": "i32"}
    return [ast_spec(_segment_sum_kernel, sig, {"BLOCK_I": 8, "BLOCK_D": 256}, list(sig),
                     num_warps=4)]
