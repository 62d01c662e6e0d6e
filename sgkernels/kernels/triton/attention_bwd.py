"""Backward kernels of varlen attention (FlashAttention-2 tiling); math: sgkernels.ops.attention.

Three launches, no atomics, so every gradient is deterministic:
    _attn_bwd_preprocess_kernel   D = rowsum(dO∘O) in fp32, [H, T]
    _attn_bwd_dkdv_kernel         one program per (key block, segment, head): holds K, V, dK, dV
                                  and streams the segment's query blocks (Q, dO, lse, D)
    _attn_bwd_dq_kernel           one program per (query block, segment, head): holds Q, dO, dQ
                                  and streams the segment's key blocks (K, V)
P is rebuilt from the saved lse as 2^(s·log2 e − lse·log2 e); P and dS are cast to the input
dtype before their products so that fp16/bf16 inputs run on tensor cores (wgmma on sm_90a).
Head rows are split in two power-of-two blocks like the forward (attention_fwd.head_split):
every product over the head dim is a sum of two dots, every product into it two dots.
Every tensor has its own token stride, so dQ, dK, dV may be the three slots of one [T, 3, H, Dh]
buffer. With rope, Q and K are the rotated ones (recomputed), and dQ, dK are rotated back in
place after the kernels (one more launch).
"""
import torch
import triton
import triton.language as tl

from .attention_fwd import (LOG2E, TOKEN_ARGS, autotuned_by_dtype, dot_precision, head_rows,
                            head_split, load_part, load_parts, program_segment, store_part,
                            zero_parts)
from .rope import check_layout, rotate_qk

# (meta, num_warps, num_stages). GPU configs are checked for spills at Dh 64/72/128 (sm_90a).
DKDV_CONFIGS = [
    ({"BLOCK_M": 32, "BLOCK_N": 128}, 8, 3),
    ({"BLOCK_M": 32, "BLOCK_N": 128}, 8, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 3),
]
# fp32 (3xTF32, correctness, not speed): 16-key tiles, one power-of-two head block
# (attention_fwd.head_split). The held k, v, their hi/lo parts and dK, dV fill the registers:
# 32-key tiles at 4 warps spill 0.6-4 KB at Dh 128, 64-key ones more; these are spill-free at
# Dh 64/72/128 with Triton 3.6 and 3.9 (32 x 16 at exactly 255 registers).
DKDV_FP32_CONFIGS = [
    ({"BLOCK_M": 16, "BLOCK_N": 16}, 4, 2),
    ({"BLOCK_M": 32, "BLOCK_N": 16}, 4, 2),
]
DKDV_INTERPRET_CONFIG = ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1)
DQ_NARROW = ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2)   # padded head widths <= 80 only: _dq_prune
DQ_CONFIGS = [
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 2),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    DQ_NARROW,
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 3),
]
# fp32: 16-query tiles (q, dO, their hi/lo parts and dQ held); 64-query tiles spill 0.2-1 KB at
# Dh 128, 32-query ones 0.5-0.7 KB at 4 warps. Spill-free at Dh 64/72/128 (3.6 and 3.9).
DQ_FP32_CONFIGS = [
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 2),
    ({"BLOCK_M": 16, "BLOCK_N": 16}, 4, 2),
]
DQ_INTERPRET_CONFIG = ({"BLOCK_M": 32, "BLOCK_N": 16}, 4, 1)
PREPROCESS_ROWS = 64
PREPROCESS_TOKEN_ARGS = ["n_rows", "n_tokens"]


def _dq_prune(configs, named_args, **kwargs):
    """DQ_NARROW (a 64 x 64 tile at 4 warps) only where the padded head width D_A + D_B is at
    most 80 (Dh 64, 72: 128 and 156 registers, spill-free): at Dh 128 it needs 234 registers with
    Triton 3.6 and spills 32 bytes with Triton 3.9's ptxas (255), and the 8-warp 128-row
    configs and the 64 x 32 one cover that width."""
    if kwargs["D_A"] + kwargs["D_B"] <= 80:
        return configs
    meta, warps, stages = DQ_NARROW
    return [c for c in configs
            if (c.kwargs, c.num_warps, c.num_stages) != (meta, warps, stages)]


def preprocess_block_d(head_dim):
    """Register width of a head row in the (memory-bound) D = rowsum(dO∘O) preprocess: the next
    power of two (masked channels cost no bandwidth there)."""
    return max(16, triton.next_power_of_2(head_dim))


@triton.jit(do_not_specialize=PREPROCESS_TOKEN_ARGS)
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA, stride_ot, stride_dot, n_rows, n_heads, n_tokens,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Rows r = t·H + h of the [T·H, Dh] view; D is stored head-major like lse: DELTA[h, t].
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_mask = rows < n_rows
    mask = r_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    tokens = (rows // n_heads).to(tl.int64)
    heads = rows % n_heads
    o_offs = (tokens * stride_ot + heads * HEAD_DIM)[:, None] + offs_d[None, :]
    do_offs = (tokens * stride_dot + heads * HEAD_DIM)[:, None] + offs_d[None, :]
    o = tl.load(O + o_offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + do_offs, mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(DELTA + heads * n_tokens + tokens, delta, mask=r_mask)


@triton.jit
def _attn_bwd_dkdv_tiles(
    dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, Q, DO, stats, deltas, stride_qt, stride_dot,
    m_lo, m_hi, seqlen, qk_scale_log2,
    HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, PARTIAL: tl.constexpr,
):
    """dK, dV contributions of the query tiles starting in [m_lo, m_hi); only the PARTIAL tile
    (the segment's last, shorter one) masks queries at or past `seqlen`."""
    offs_m = tl.arange(0, BLOCK_M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rows = m0 + offs_m
        m_ok = rows < seqlen
        if PARTIAL:
            lse_log2 = tl.load(stats + rows, mask=m_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(deltas + rows, mask=m_ok, other=0.0)
        else:
            lse_log2 = tl.load(stats + rows) * 1.4426950408889634
            delta = tl.load(deltas + rows)
        q_a = load_part(Q, rows, m_ok, stride_qt, 0, D_A, HEAD_DIM, PARTIAL)
        # Transposed scores sᵀ [BLOCK_N, BLOCK_M]: rows are this program's keys.
        s_t = tl.dot(k_a, tl.trans(q_a), input_precision=DOT_PRECISION)
        if D_B > 0:
            q_b = load_part(Q, rows, m_ok, stride_qt, D_A, D_B, HEAD_DIM, PARTIAL)
            s_t = tl.dot(k_b, tl.trans(q_b), s_t, input_precision=DOT_PRECISION)
        p_t = tl.exp2(s_t * qk_scale_log2 - lse_log2[None, :])
        if PARTIAL:
            p_t = tl.where(m_ok[None, :], p_t, 0.0)
        do_a = load_part(DO, rows, m_ok, stride_dot, 0, D_A, HEAD_DIM, PARTIAL)
        p_lo = p_t.to(do_a.dtype)
        dv_a = tl.dot(p_lo, do_a, dv_a, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v_a, tl.trans(do_a), input_precision=DOT_PRECISION)
        if D_B > 0:
            do_b = load_part(DO, rows, m_ok, stride_dot, D_A, D_B, HEAD_DIM, PARTIAL)
            dv_b = tl.dot(p_lo, do_b, dv_b, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v_b, tl.trans(do_b), dp_t, input_precision=DOT_PRECISION)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q_a.dtype)
        dk_a = tl.dot(ds_t, q_a, dk_a, input_precision=DOT_PRECISION)
        if D_B > 0:
            dk_b = tl.dot(ds_t, q_b, dk_b, input_precision=DOT_PRECISION)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit(do_not_specialize=TOKEN_ARGS)
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS,
    stride_qt, stride_kt, stride_vt, stride_dot, stride_dkt, stride_dvt,
    n_tokens, sm_scale, qk_scale_log2,
    HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen = program_segment(CU_SEQLENS)
    if tl.program_id(0) * BLOCK_N >= seqlen:
        return
    Q = head_rows(Q, start, head, stride_qt, HEAD_DIM)
    K = head_rows(K, start, head, stride_kt, HEAD_DIM)
    V = head_rows(V, start, head, stride_vt, HEAD_DIM)
    DO = head_rows(DO, start, head, stride_dot, HEAD_DIM)
    DK = head_rows(DK, start, head, stride_dkt, HEAD_DIM)
    DV = head_rows(DV, start, head, stride_dvt, HEAD_DIM)
    stats = LSE + head * n_tokens + start
    deltas = DELTA + head * n_tokens + start

    # Keys past the segment load as zeros; their rows of dK/dV are garbage and never stored.
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < seqlen
    k_a, k_b = load_parts(K, keys, key_ok, stride_kt, D_A, D_B, HEAD_DIM)
    v_a, v_b = load_parts(V, keys, key_ok, stride_vt, D_A, D_B, HEAD_DIM)
    dk_a, dk_b = zero_parts(BLOCK_N, D_A, D_B)
    dv_a, dv_b = zero_parts(BLOCK_N, D_A, D_B)

    full_end = seqlen - seqlen % BLOCK_M
    dk_a, dk_b, dv_a, dv_b = _attn_bwd_dkdv_tiles(
        dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, Q, DO, stats, deltas, stride_qt, stride_dot,
        0, full_end, seqlen, qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_M,
        PARTIAL=False)
    dk_a, dk_b, dv_a, dv_b = _attn_bwd_dkdv_tiles(
        dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, Q, DO, stats, deltas, stride_qt, stride_dot,
        full_end, seqlen, seqlen, qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_M,
        PARTIAL=True)
    store_part(DK, keys, key_ok, stride_dkt, dk_a * sm_scale, 0, D_A, HEAD_DIM)
    store_part(DV, keys, key_ok, stride_dvt, dv_a, 0, D_A, HEAD_DIM)
    if D_B > 0:
        store_part(DK, keys, key_ok, stride_dkt, dk_b * sm_scale, D_A, D_B, HEAD_DIM)
        store_part(DV, keys, key_ok, stride_dvt, dv_b, D_A, D_B, HEAD_DIM)


@triton.jit
def _attn_bwd_dq_tiles(
    dq_a, dq_b, q_a, q_b, do_a, do_b, lse_log2, delta, K, V, stride_kt, stride_vt,
    n_lo, n_hi, seqlen, qk_scale_log2,
    HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
):
    """dQ contributions of the key tiles starting in [n_lo, n_hi); only the PARTIAL tile masks
    keys at or past `seqlen` (their zero scores would give p = 2^(−lse), which may overflow)."""
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        keys = n0 + offs_n
        n_ok = keys < seqlen
        k_a = load_part(K, keys, n_ok, stride_kt, 0, D_A, HEAD_DIM, PARTIAL)
        s = tl.dot(q_a, tl.trans(k_a), input_precision=DOT_PRECISION)
        if D_B > 0:
            k_b = load_part(K, keys, n_ok, stride_kt, D_A, D_B, HEAD_DIM, PARTIAL)
            s = tl.dot(q_b, tl.trans(k_b), s, input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale_log2 - lse_log2[:, None])
        if PARTIAL:
            p = tl.where(n_ok[None, :], p, 0.0)
        v_a = load_part(V, keys, n_ok, stride_vt, 0, D_A, HEAD_DIM, PARTIAL)
        dp = tl.dot(do_a, tl.trans(v_a), input_precision=DOT_PRECISION)
        if D_B > 0:
            v_b = load_part(V, keys, n_ok, stride_vt, D_A, D_B, HEAD_DIM, PARTIAL)
            dp = tl.dot(do_b, tl.trans(v_b), dp, input_precision=DOT_PRECISION)
        ds = (p * (dp - delta[:, None])).to(k_a.dtype)
        dq_a = tl.dot(ds, k_a, dq_a, input_precision=DOT_PRECISION)
        if D_B > 0:
            dq_b = tl.dot(ds, k_b, dq_b, input_precision=DOT_PRECISION)
    return dq_a, dq_b


@triton.jit(do_not_specialize=TOKEN_ARGS)
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS,
    stride_qt, stride_kt, stride_vt, stride_dot, stride_dqt,
    n_tokens, sm_scale, qk_scale_log2,
    HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen = program_segment(CU_SEQLENS)
    if tl.program_id(0) * BLOCK_M >= seqlen:
        return
    Q = head_rows(Q, start, head, stride_qt, HEAD_DIM)
    K = head_rows(K, start, head, stride_kt, HEAD_DIM)
    V = head_rows(V, start, head, stride_vt, HEAD_DIM)
    DO = head_rows(DO, start, head, stride_dot, HEAD_DIM)
    DQ = head_rows(DQ, start, head, stride_dqt, HEAD_DIM)

    # Queries past the segment load as zeros (finite p); their rows of dQ are never stored.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen
    q_a, q_b = load_parts(Q, rows, row_ok, stride_qt, D_A, D_B, HEAD_DIM)
    do_a, do_b = load_parts(DO, rows, row_ok, stride_dot, D_A, D_B, HEAD_DIM)
    dq_a, dq_b = zero_parts(BLOCK_M, D_A, D_B)
    stat = head * n_tokens + start + rows
    lse_log2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)

    full_end = seqlen - seqlen % BLOCK_N
    dq_a, dq_b = _attn_bwd_dq_tiles(
        dq_a, dq_b, q_a, q_b, do_a, do_b, lse_log2, delta, K, V, stride_kt, stride_vt, 0,
        full_end, seqlen, qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_N,
        PARTIAL=False)
    dq_a, dq_b = _attn_bwd_dq_tiles(
        dq_a, dq_b, q_a, q_b, do_a, do_b, lse_log2, delta, K, V, stride_kt, stride_vt,
        full_end, seqlen, seqlen, qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_N,
        PARTIAL=True)
    store_part(DQ, rows, row_ok, stride_dqt, dq_a * sm_scale, 0, D_A, HEAD_DIM)
    if D_B > 0:
        store_part(DQ, rows, row_ok, stride_dqt, dq_b * sm_scale, D_A, D_B, HEAD_DIM)


_attn_bwd_dkdv = autotuned_by_dtype(_attn_bwd_dkdv_kernel, DKDV_CONFIGS, DKDV_FP32_CONFIGS,
                                    DKDV_INTERPRET_CONFIG)
_attn_bwd_dq = autotuned_by_dtype(_attn_bwd_dq_kernel, DQ_CONFIGS, DQ_FP32_CONFIGS,
                                  DQ_INTERPRET_CONFIG, _dq_prune)


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, rope=None,
                         out=None):
    """(dq, dk, dv) of varlen_attention_fwd given dO, its output o and lse [H, T] fp32.

    Every [T, H, Dh] argument may have its own token stride (dense heads and features). rope:
    the forward's (pos, theta); dq, dk are then the gradients of the unrotated q, k. out: an
    optional (dq, dk, dv) to write into (e.g. the slots of one [T, 3, H, Dh] buffer), returned;
    otherwise three new contiguous tensors."""
    total, heads, head_dim = q.shape
    check_layout("varlen_attention_bwd", do=do, q=q, k=k, v=v, o=o)
    fp32 = q.dtype == torch.float32
    d_a, d_b = head_split(head_dim, fp32)
    if out is None:
        out = tuple(torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
                    for _ in range(3))
    dq, dk, dv = out
    check_layout("varlen_attention_bwd", dq=dq, dk=dk, dv=dv)
    segments = cu_seqlens.shape[0] - 1
    if total == 0 or segments == 0 or max_seqlen == 0:
        return dq, dk, dv
    if rope is not None:
        q, k = rotate_qk(q, k, *rope)

    delta = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    rows = total * heads
    _attn_bwd_preprocess_kernel[(triton.cdiv(rows, PREPROCESS_ROWS),)](
        o, do, delta, o.stride(0), do.stride(0), rows, heads, total,
        HEAD_DIM=head_dim, BLOCK_D=preprocess_block_d(head_dim),
        BLOCK_R=PREPROCESS_ROWS,
    )

    def grid_keys(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_N"]), segments, heads)

    def grid_queries(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), segments, heads)

    common = {"HEAD_DIM": head_dim, "D_A": d_a, "D_B": d_b,
              "DOT_PRECISION": dot_precision(q.dtype)}
    scales = (total, float(scale), float(scale) * LOG2E)
    strides = (q.stride(0), k.stride(0), v.stride(0), do.stride(0))
    tensors = (q, k, v, do, lse, delta)
    _attn_bwd_dkdv[fp32].launch(grid_keys, max_seqlen, *tensors, dk, dv, cu_seqlens, *strides,
                                dk.stride(0), dv.stride(0), *scales, **common)
    _attn_bwd_dq[fp32].launch(grid_queries, max_seqlen, *tensors, dq, cu_seqlens, *strides,
                              dq.stride(0), *scales, **common)
    if rope is not None:
        rotate_qk(dq, dk, *rope, out=(dq, dk), inverse=True)
    return dq, dk, dv
