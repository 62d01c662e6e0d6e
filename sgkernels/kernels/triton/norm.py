"""rms_norm and rms_norm_modulate for the Triton backend, forward and backward; math:
sgkernels.ops.norm.

A program owns whole rows (BLOCK_D = next_pow2(D) ≥ D columns, BLOCK_M rows), so the row statistic
is one in-register reduction (no register spills on sm_90 up to D = 4096; wider rows spill in
the backward but stay correct); fp32 inside the kernels; rstd [M] fp32 is saved for the
backward. The backward runs one program per reduction item (≤ R rows, inside one segment for the
modulated norm, segments.py): it writes dx and fp32 partial rows of dweight/dshift/dscale, which
a second kernel sums in a fixed order (deterministic, no atomics; the partials add
(M/R + S)·D·4 bytes, written and read once). Forward kernels are autotuned over BLOCK_M and
num_warps (keyed on D); the backward launch is a fixed function of D so that the summation
order, and with it every weight-gradient bit, is the same in every process. The row functions
(`modulate_fwd`, `modulate_bwd`) also serve the fused route start (route_norm.py, GATHER).
"""
import torch
import triton
import triton.language as tl

from .launch import INTERPRET, Autotuned, ast_spec
from .segments import column_sum, plan_item, rows_per_item, segment_plan, segment_sum


@triton.jit
def _normalize(x, W, cols, D, eps, HAS_WEIGHT: tl.constexpr):
    """x [BLOCK_M, BLOCK_D] (0 outside the rows) -> fp32 (n = x̂·w [BLOCK_M, BLOCK_D], rstd)."""
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    n = x * rstd[:, None]
    if HAS_WEIGHT:
        n = n * tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    return n, rstd


@triton.jit(do_not_specialize=["M"])
def _rms_norm_fwd_kernel(X, W, Y, RSTD, M, D, stride_x, stride_y, eps,
                         HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    x = tl.load(X + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=mask, other=0.0)
    n, rstd = _normalize(x, W, cols, D, eps, HAS_WEIGHT)
    tl.store(RSTD + rows, rstd, mask=rows < M)
    tl.store(Y + rows[:, None].to(tl.int64) * stride_y + cols[None, :], n.to(Y.dtype.element_ty),
             mask=mask)


@triton.jit
def modulate_fwd(X, IDX, W, SHIFT, SCALE, SEG, H, Y, RSTD, M, D, stride_x, stride_h, stride_y,
                 stride_s, eps, HAS_WEIGHT: tl.constexpr, GATHER: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows of rms_norm_modulate's forward; with GATHER, row k reads x[IDX[k]] and also writes
    it to H[k]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < D)[None, :]
    src = rows.to(tl.int64)
    if GATHER:
        src = tl.load(IDX + rows, mask=row_ok, other=0).to(tl.int64)
    x = tl.load(X + src[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if GATHER:
        tl.store(H + rows[:, None].to(tl.int64) * stride_h + cols[None, :], x, mask=mask)
    n, rstd = _normalize(x, W, cols, D, eps, HAS_WEIGHT)
    s = tl.load(SEG + rows, mask=row_ok, other=0)
    mod = s[:, None] * stride_s + cols[None, :]
    shift = tl.load(SHIFT + mod, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + mod, mask=mask, other=0.0).to(tl.float32)
    tl.store(RSTD + rows, rstd, mask=row_ok)
    tl.store(Y + rows[:, None].to(tl.int64) * stride_y + cols[None, :],
             (n * (1.0 + scale) + shift).to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _rms_norm_modulate_fwd_kernel(X, W, SHIFT, SCALE, SEG, Y, RSTD, M, D, stride_x, stride_y,
                                  stride_s, eps, HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_D: tl.constexpr):
    modulate_fwd(X, SEG, W, SHIFT, SCALE, SEG, Y, Y, RSTD, M, D, stride_x, stride_y, stride_y,
                 stride_s, eps, HAS_WEIGHT, False, BLOCK_M, BLOCK_D)


@triton.jit
def _rms_norm_bwd_rows(DY, X, W, RSTD, DX, IDX, DH, rows, cols, end, D, stride_dy, stride_x,
                       stride_dx, stride_dh, one_plus_scale, HAS_WEIGHT: tl.constexpr,
                       MODULATE: tl.constexpr, GATHER: tl.constexpr):
    """dx of `rows` (< end); returns (dy, x̂, n, dn) fp32 for the caller's column sums.
    With GATHER, row k's gradient plus DH[k] goes to DX row IDX[k]."""
    row_ok = rows < end
    mask = row_ok[:, None] & (cols < D)[None, :]
    r64 = rows[:, None].to(tl.int64)
    dy = tl.load(DY + r64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + r64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
    xhat = x * rstd[:, None]
    dn = dy
    if MODULATE:
        dn = dy * one_plus_scale[None, :]
    g = dn
    n = xhat
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        g = dn * w
        n = xhat * w
    c = tl.sum(g * xhat, axis=1) / D
    dx = (g - xhat * c[:, None]) * rstd[:, None]
    dst = r64
    if GATHER:
        dx += tl.load(DH + r64 * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dst = tl.load(IDX + rows, mask=row_ok, other=0).to(tl.int64)[:, None]
    tl.store(DX + dst * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
    return dy, xhat, n, dn


@triton.jit(do_not_specialize=["M"])
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, PW, M, R, D, stride_dy, stride_x, stride_dx, stride_p,
                         HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program i: rows [i·R, min((i+1)·R, M)); fp32 partial of dweight in PW[i]."""
    item = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    start = item * R
    end = tl.minimum(start + R, M)
    acc_w = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_M):
        rows = start + r0 + tl.arange(0, BLOCK_M)
        _, xhat, _, dn = _rms_norm_bwd_rows(DY, X, W, RSTD, DX, DX, DX, rows, cols, end, D,
                                            stride_dy, stride_x, stride_dx, stride_dx, 1.0,
                                            HAS_WEIGHT, False, False)
        acc_w += tl.sum(dn * xhat, 0)
    if HAS_WEIGHT:
        tl.store(PW + item.to(tl.int64) * stride_p + cols, acc_w, mask=cols < D)


@triton.jit
def modulate_bwd(DY, X, W, SCALE, RSTD, DX, IDX, DH, PW, PMOD, ITEM_START, ITEM_END, ITEM_SEG, R,
                 D, stride_dy, stride_x, stride_dx, stride_dh, stride_s, stride_pw, stride_pb,
                 stride_p, HAS_WEIGHT: tl.constexpr, GATHER: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program i: rows of item i (one segment); fp32 partials of dweight in PW[i], of dshift and
    dscale in PMOD[0, i] and PMOD[1, i]."""
    item = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    start, end, s = plan_item(ITEM_START, ITEM_END, ITEM_SEG, item)
    scale = tl.load(SCALE + s * stride_s + cols, mask=col_ok, other=0.0).to(tl.float32)
    one_plus_scale = 1.0 + scale
    acc_w = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_M):
        rows = start + r0 + tl.arange(0, BLOCK_M)
        dy, xhat, n, dn = _rms_norm_bwd_rows(DY, X, W, RSTD, DX, IDX, DH, rows, cols, end, D,
                                             stride_dy, stride_x, stride_dx, stride_dh,
                                             one_plus_scale, HAS_WEIGHT, True, GATHER)
        acc_w += tl.sum(dn * xhat, 0)
        acc_shift += tl.sum(dy, 0)
        acc_scale += tl.sum(dy * n, 0)
    i64 = item.to(tl.int64)
    if HAS_WEIGHT:
        tl.store(PW + i64 * stride_pw + cols, acc_w, mask=col_ok)
    tl.store(PMOD + i64 * stride_p + cols, acc_shift, mask=col_ok)
    tl.store(PMOD + stride_pb + i64 * stride_p + cols, acc_scale, mask=col_ok)


@triton.jit
def _rms_norm_modulate_bwd_kernel(DY, X, W, SCALE, RSTD, DX, PW, PMOD, ITEM_START, ITEM_END,
                                  ITEM_SEG, R, D, stride_dy, stride_x, stride_dx, stride_s,
                                  stride_pw, stride_pb, stride_p, HAS_WEIGHT: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    modulate_bwd(DY, X, W, SCALE, RSTD, DX, DX, DX, PW, PMOD, ITEM_START, ITEM_END, ITEM_SEG, R,
                 D, stride_dy, stride_x, stride_dx, stride_dx, stride_s, stride_pw, stride_pb,
                 stride_p, HAS_WEIGHT, False, BLOCK_M, BLOCK_D)


def _configs(block_ms, warps):
    return [({"BLOCK_M": m}, w, 1) for m in block_ms for w in warps]


def _prune(configs, named_args, **kwargs):
    """Tiles of 8..32 fp32 elements per thread: no register spills, yet wide accesses. Narrow
    rows (< 8 per thread at best) keep their largest fitting tile, very wide rows the least
    loaded one."""
    def per_thread(c):
        return c.kwargs["BLOCK_M"] * kwargs["BLOCK_D"] / (32 * c.num_warps)
    kept = [c for c in configs if 8 <= per_thread(c) <= 32]
    fits = [c for c in configs if per_thread(c) <= 32]
    return kept or [max(fits, key=per_thread) if fits else min(configs, key=per_thread)]


_KEY = ["D", "HAS_WEIGHT"]
_CONFIGS = _configs((1, 2, 4, 8, 16), (4, 8, 16))
_FIXED = {"BLOCK_M": 2, "num_warps": 4}
_INTERPRET_CONFIG = ({"BLOCK_M": 2}, 4, 1)


def autotuned_rows(kernel):
    """`kernel` (a whole-row forward) autotuned over the row tiles that `_prune` keeps for D."""
    return Autotuned(kernel, _CONFIGS, _KEY, _INTERPRET_CONFIG, _prune)


_fwd = autotuned_rows(_rms_norm_fwd_kernel)
_mod_fwd = autotuned_rows(_rms_norm_modulate_fwd_kernel)


def _bwd_config(dim):
    """The backward launch is fixed, not autotuned: the tile sets the order in which rows are
    summed into dweight/dshift/dscale, and a timing-dependent autotuner choice would make those
    gradients differ bitwise between processes."""
    block_d = triton.next_power_of_2(dim)
    if INTERPRET:
        return {"BLOCK_D": block_d, **_FIXED}
    block_m = max(1, min(8, 2048 // block_d))
    return {"BLOCK_D": block_d, "BLOCK_M": block_m,
            "num_warps": min(16, max(4, block_m * block_d // 256))}


def row_grid(rows):
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)


def rms_norm_fwd(x2d, weight, eps):
    rows, dim = x2d.shape
    y = torch.empty_like(x2d)
    rstd = torch.empty(rows, device=x2d.device, dtype=torch.float32)
    _fwd.launch(row_grid(rows), rows, x2d, weight, y, rstd, rows, dim, x2d.stride(0),
           y.stride(0), float(eps), HAS_WEIGHT=weight is not None,
           BLOCK_D=triton.next_power_of_2(dim))
    return y, rstd


def rms_norm_bwd(dy, x2d, weight, rstd):
    rows, dim = x2d.shape
    per_item = rows_per_item(rows, x2d.device)
    items = triton.cdiv(rows, per_item)
    dx = torch.empty_like(x2d)
    partials = torch.empty(items if weight is not None else 1, dim, device=x2d.device,
                           dtype=torch.float32)
    _rms_norm_bwd_kernel[(items,)](dy, x2d, weight, rstd, dx, partials, rows, per_item, dim,
                                   dy.stride(0), x2d.stride(0), dx.stride(0), partials.stride(0),
                                   HAS_WEIGHT=weight is not None, **_bwd_config(dim))
    return dx, (column_sum(partials, x2d.dtype) if weight is not None else None)


def rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps):
    rows, dim = x.shape
    y = torch.empty_like(x)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    _mod_fwd.launch(row_grid(rows), rows, x, weight, shift, scale, seg, y, rstd, rows, dim,
           x.stride(0), y.stride(0), shift.stride(0), float(eps), HAS_WEIGHT=weight is not None,
           BLOCK_D=triton.next_power_of_2(dim))
    return y, rstd


def modulate_bwd_sums(kernel, head, strides, x, weight, scale, seg):
    """Launch a modulated-norm backward kernel(*head, PW, PMOD, ITEM_START, ITEM_END, ITEM_SEG, R,
    D, *strides, stride_pw, stride_pb, stride_p), one program per reduction item of the rows of
    x, then sum its fp32 partials -> (dweight | None, dshift, dscale)."""
    rows, dim = x.shape
    per_item = rows_per_item(rows, x.device)
    plan = segment_plan(seg, scale.shape[0], per_item)
    items = plan["start"].shape[0]
    pw = torch.empty(items if weight is not None else 1, dim, device=x.device, dtype=torch.float32)
    pmod = torch.empty(2, items, dim, device=x.device, dtype=torch.float32)
    kernel[(items,)](*head, pw, pmod, plan["start"], plan["end"], plan["seg"], per_item, dim,
                     *strides, pw.stride(0), pmod.stride(0), pmod.stride(1),
                     HAS_WEIGHT=weight is not None, **_bwd_config(dim))
    dshift = segment_sum(pmod[0], plan["first"], plan["last"], x.dtype)
    dscale = segment_sum(pmod[1], plan["first"], plan["last"], x.dtype)
    dweight = column_sum(pw, x.dtype) if weight is not None else None
    return dweight, dshift, dscale


def rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd):
    dx = torch.empty_like(x)
    sums = modulate_bwd_sums(_rms_norm_modulate_bwd_kernel, (dy, x, weight, scale, rstd, dx),
                             (dy.stride(0), x.stride(0), dx.stride(0), scale.stride(0)),
                             x, weight, scale, seg)
    return (dx, *sums)


SPEC_DIMS = (256, 1152, 4096)  # bf16 with weight, as model widths specialize them (1152: SiT-XL)


def row_specs(forward, backward):
    """Static specs at every width of SPEC_DIMS: the autotuned forwards [(Autotuned, signature)]
    under every config the prune keeps there (together: every config), the backward kernels
    [(kernel, signature)] under their fixed config."""
    specs = []
    for dim in SPEC_DIMS:
        tag, shape = f"_d{dim}", {"HAS_WEIGHT": True, "BLOCK_D": triton.next_power_of_2(dim)}
        for entry, sig in forward:
            specs += entry.specs(sig, shape, [n for n in sig if n != "eps"], tag)
        config = dict(_bwd_config(dim))
        warps = config.pop("num_warps")
        specs += [ast_spec(kernel, sig, {"HAS_WEIGHT": True, **config}, list(sig), warps,
                           name=kernel.__name__ + tag)
                  for kernel, sig in backward]
    return specs


def static_specs():
    """The norm kernels at every width of SPEC_DIMS (`row_specs`)."""
    ptr, i32 = "*bf16", "i32"
    fwd = {"X": ptr, "W": ptr, "Y": ptr, "RSTD": "*fp32", "M": i32, "D": i32, "stride_x": i32,
           "stride_y": i32, "eps": "fp32"}
    mod_fwd = {"X": ptr, "W": ptr, "SHIFT": ptr, "SCALE": ptr, "SEG": "*i32", "Y": ptr,
               "RSTD": "*fp32", "M": i32, "D": i32, "stride_x": i32, "stride_y": i32,
               "stride_s": i32, "eps": "fp32"}
    bwd = {"DY": ptr, "X": ptr, "W": ptr, "RSTD": "*fp32", "DX": ptr, "PW": "*fp32", "M": i32,
           "R": i32, "D": i32, "stride_dy": i32, "stride_x": i32, "stride_dx": i32, "stride_p": i32}
    mod_bwd = {"DY": ptr, "X": ptr, "W": ptr, "SCALE": ptr, "RSTD": "*fp32", "DX": ptr,
               "PW": "*fp32", "PMOD": "*fp32", "ITEM_START": "*i32", "ITEM_END": "*i32",
               "ITEM_SEG": "*i32", "R": i32, "D": i32, "stride_dy": i32, "stride_x": i32,
               "stride_dx": i32, "stride_s": i32, "stride_pw": i32, "stride_pb": i32,
               "stride_p": i32}
    return row_specs([(_fwd, fwd), (_mod_fwd, mod_fwd)],
                     [(_rms_norm_bwd_kernel, bwd), (_rms_norm_modulate_bwd_kernel, mod_bwd)])
