"""Backward kernels of varlen attention (FlashAttention-2 tiling); the math is in attention.py.

Three launches, no atomics, so every gradient is deterministic:
    _attn_bwd_preprocess_kernel   D = rowsum(dO∘O) in fp32, [H, T]
    _attn_bwd_dkdv_kernel         one program per (key block, segment, head): holds K, V, dK, dV
                                  and streams the segment's query blocks (Q, dO, lse, D)
    _attn_bwd_dq_kernel           one program per (query block, segment, head): holds Q, dO, dQ
                                  and streams the segment's key blocks (K, V)
P is rebuilt from the saved lse as 2^(s·log2 e − lse·log2 e); P and dS are cast to the input
dtype before their products so that fp16/bf16 inputs run on tensor cores (wgmma on sm_90a).
"""
import torch
import triton
import triton.language as tl

from .attention_fwd import (LOG2E, autotuned_by_dtype, block_d, dot_precision, program_rows,
                            program_segment)

# (meta, num_warps, num_stages). GPU configs are checked for spills at Dh 64/72/128 (sm_90a).
DKDV_CONFIGS = [
    ({"BLOCK_M": 32, "BLOCK_N": 128}, 8, 3),
    ({"BLOCK_M": 32, "BLOCK_N": 128}, 8, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 3),
]
# fp32 (3xTF32, not a speed target): fit shared memory at Dh 128; dK/dV spill ~0.5 KB there.
DKDV_FP32_CONFIGS = [
    ({"BLOCK_M": 32, "BLOCK_N": 64}, 8, 2),
]
DKDV_INTERPRET_CONFIG = ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 1)
DQ_CONFIGS = [
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 2),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 3),
]
DQ_FP32_CONFIGS = [
    ({"BLOCK_M": 64, "BLOCK_N": 16}, 4, 2),
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2),
]
DQ_INTERPRET_CONFIG = ({"BLOCK_M": 32, "BLOCK_N": 16}, 4, 1)
PREPROCESS_ROWS = 64


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA, n_rows, n_heads, n_tokens,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Rows r = t·H + h of the [T·H, Dh] view; D is stored head-major like lse: DELTA[h, t].
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_mask = rows < n_rows
    mask = r_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    offs = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(DELTA + (rows % n_heads) * n_tokens + rows // n_heads, delta, mask=r_mask)


@triton.jit
def _attn_bwd_dkdv_tiles(
    dk, dv, k, v, Q, DO, stats, deltas, base, stride_t, m_lo, m_hi, seqlen, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, PARTIAL: tl.constexpr,
):
    """dK, dV contributions of the query tiles starting in [m_lo, m_hi); only the PARTIAL tile
    (the segment's last, shorter one) masks queries at or past `seqlen`."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rows = m0 + offs_m
        q_offs = base + rows[:, None] * stride_t + offs_d[None, :]
        q_mask = (offs_d < HEAD_DIM)[None, :]
        if PARTIAL:
            m_mask = rows < seqlen
            q_mask = q_mask & m_mask[:, None]
            lse_log2 = tl.load(stats + rows, mask=m_mask, other=0.0) * 1.4426950408889634
            delta = tl.load(deltas + rows, mask=m_mask, other=0.0)
        else:
            lse_log2 = tl.load(stats + rows) * 1.4426950408889634
            delta = tl.load(deltas + rows)
        q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
        # Transposed scores sᵀ [BLOCK_N, BLOCK_M]: rows are this program's keys.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        p_t = tl.exp2(s_t * qk_scale_log2 - lse_log2[None, :])
        if PARTIAL:
            p_t = tl.where(m_mask[None, :], p_t, 0.0)
        do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS,
    stride_t, n_tokens, sm_scale, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen, base = program_segment(CU_SEQLENS, stride_t, HEAD_DIM)
    if tl.program_id(0) * BLOCK_N >= seqlen:
        return

    _, _, kv_offs, kv_mask = program_rows(base, stride_t, seqlen, HEAD_DIM, BLOCK_D, BLOCK_N)
    # Keys past the segment load as zeros; their rows of dK/dV are garbage and never stored.
    k = tl.load(K + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
    stats = LSE + head * n_tokens + start
    deltas = DELTA + head * n_tokens + start

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    full_end = seqlen - seqlen % BLOCK_M
    dk, dv = _attn_bwd_dkdv_tiles(dk, dv, k, v, Q, DO, stats, deltas, base, stride_t, 0, full_end,
                                  seqlen, qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION, BLOCK_M,
                                  PARTIAL=False)
    dk, dv = _attn_bwd_dkdv_tiles(dk, dv, k, v, Q, DO, stats, deltas, base, stride_t, full_end,
                                  seqlen, seqlen, qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION,
                                  BLOCK_M, PARTIAL=True)
    tl.store(DK + kv_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_tiles(
    dq, q, do, lse_log2, delta, K, V, base, stride_t, n_lo, n_hi, seqlen, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
):
    """dQ contributions of the key tiles starting in [n_lo, n_hi); only the PARTIAL tile masks
    keys at or past `seqlen` (their zero scores would give p = 2^(−lse), which may overflow)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        kv_offs = base + (n0 + offs_n)[:, None] * stride_t + offs_d[None, :]
        kv_mask = (offs_d < HEAD_DIM)[None, :]
        if PARTIAL:
            n_mask = (n0 + offs_n) < seqlen
            kv_mask = kv_mask & n_mask[:, None]
        k = tl.load(K + kv_offs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale_log2 - lse_log2[:, None])
        if PARTIAL:
            p = tl.where(n_mask[None, :], p, 0.0)
        v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS,
    stride_t, n_tokens, sm_scale, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen, base = program_segment(CU_SEQLENS, stride_t, HEAD_DIM)
    if tl.program_id(0) * BLOCK_M >= seqlen:
        return

    offs_m, m_mask, q_offs, q_mask = program_rows(base, stride_t, seqlen, HEAD_DIM, BLOCK_D,
                                                  BLOCK_M)
    # Queries past the segment load as zeros (finite p); their rows of dQ are never stored.
    q = tl.load(Q + q_offs, mask=q_mask, other=0.0)
    do = tl.load(DO + q_offs, mask=q_mask, other=0.0)
    row = head * n_tokens + start + offs_m
    lse_log2 = tl.load(LSE + row, mask=m_mask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row, mask=m_mask, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full_end = seqlen - seqlen % BLOCK_N
    dq = _attn_bwd_dq_tiles(dq, q, do, lse_log2, delta, K, V, base, stride_t, 0, full_end, seqlen,
                            qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION, BLOCK_N,
                            PARTIAL=False)
    dq = _attn_bwd_dq_tiles(dq, q, do, lse_log2, delta, K, V, base, stride_t, full_end, seqlen,
                            seqlen, qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION, BLOCK_N,
                            PARTIAL=True)
    tl.store(DQ + q_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


_attn_bwd_dkdv = autotuned_by_dtype(_attn_bwd_dkdv_kernel, DKDV_CONFIGS, DKDV_FP32_CONFIGS,
                                    DKDV_INTERPRET_CONFIG)
_attn_bwd_dq = autotuned_by_dtype(_attn_bwd_dq_kernel, DQ_CONFIGS, DQ_FP32_CONFIGS,
                                  DQ_INTERPRET_CONFIG)


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale):
    """(dq, dk, dv) of varlen_attention_fwd given dO, its output o and lse [H, T] fp32."""
    total, heads, head_dim = q.shape
    width = block_d(head_dim)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    segments = cu_seqlens.shape[0] - 1
    if total == 0 or segments == 0 or max_seqlen == 0:
        return dq, dk, dv

    delta = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    rows = total * heads
    _attn_bwd_preprocess_kernel[(triton.cdiv(rows, PREPROCESS_ROWS),)](
        o, do, delta, rows, heads, total,
        HEAD_DIM=head_dim, BLOCK_D=width, BLOCK_R=PREPROCESS_ROWS,
    )

    def grid_keys(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_N"]), segments, heads)

    def grid_queries(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), segments, heads)

    common = {"HEAD_DIM": head_dim, "BLOCK_D": width, "DOT_PRECISION": dot_precision(q.dtype)}
    scales = (heads * head_dim, total, float(scale), float(scale) * LOG2E)
    fp32 = q.dtype == torch.float32
    tensors = (q, k, v, do, lse, delta)
    _attn_bwd_dkdv[fp32].launch(grid_keys, max_seqlen, *tensors, dk, dv, cu_seqlens, *scales, **common)
    _attn_bwd_dq[fp32].launch(grid_queries, max_seqlen, *tensors, dq, cu_seqlens, *scales, **common)
    return dq, dk, dv
