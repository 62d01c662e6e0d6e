"""Forward kernel of varlen attention (FlashAttention-2 tiling); the math is in attention.py.

One program owns BLOCK_M query rows of one segment and one head. It streams the segment's keys
and values in BLOCK_N tiles and keeps the online-softmax state in fp32 registers, in base 2
(c = |scale|·log2 e; a negative scale negates q instead, so that c ≥ 0 and max commutes with ·c):

    s   = q·kᵀ                            m' = max(m, c·rowmax s)    p = 2^(c·s − m')  (one FMA)
    l   = l·2^(m − m') + rowsum p         acc = acc·2^(m − m') + p·v  (p cast to v's dtype)
    o   = acc / l                         lse = (m + log2 l)·ln 2    (natural log, saved)

Full key tiles run unmasked; only a segment's last, partial tile masks keys (score −inf).

Head dims that are not a power of two (72 in SiT-XL) are padded to BLOCK_D inside the kernel with
masked loads (zeros contribute nothing to q·kᵀ or p·v); memory keeps the packed [T, H, Dh] layout.
"""
import math

import torch
import triton
import triton.language as tl

from .launch import Autotuned

LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 128


def autotuned_by_dtype(kernel, configs_16bit, configs_fp32, interpret_config):
    """{is_fp32: kernel autotuned (keyed on the head dim and the size bucket of max_seqlen) over
    that dtype class's configs}.

    fp32 tiles take twice the registers and shared memory of fp16/bf16 ones (and 3xTF32 products
    hold hi/lo parts), so fp32 gets smaller tiles of its own.
    """
    return {fp32: Autotuned(kernel, configs, ["HEAD_DIM", "BLOCK_D"], interpret_config,
                            name=kernel.__name__ + ("_fp32" if fp32 else ""))
            for fp32, configs in ((False, configs_16bit), (True, configs_fp32))}


def block_d(head_dim):
    """Power-of-two register width of one head row (>= 16, the smallest tl.dot K)."""
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"varlen_attention: head dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype):
    """fp16/bf16 products on tensor cores; fp32 products as 3xTF32 (hi·hi + hi·lo + lo·hi on
    tensor cores, ~fp32 accuracy, where plain tf32 would keep only 10 mantissa bits)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


# (meta, num_warps, num_stages). GPU configs are checked for spills at Dh 64/72/128 (sm_90a).
FWD_CONFIGS = [
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 4),
    ({"BLOCK_M": 128, "BLOCK_N": 32}, 8, 3),
    ({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 3),
]
# fp32 (3xTF32): the fewest spills found at Dh 128 (a few bytes; fp32 is not a speed target).
FWD_FP32_CONFIGS = [
    ({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2),
    ({"BLOCK_M": 128, "BLOCK_N": 32}, 8, 2),
]
FWD_INTERPRET_CONFIG = ({"BLOCK_M": 32, "BLOCK_N": 16}, 4, 1)


@triton.jit
def program_segment(CU_SEQLENS, stride_t, HEAD_DIM: tl.constexpr):
    """(head, start, seqlen, base) of the program's segment (grid axis 1) and head (axis 2); base
    is the element offset of the segment's first token at this head."""
    head = tl.program_id(2)
    start = tl.load(CU_SEQLENS + tl.program_id(1))
    seqlen = tl.load(CU_SEQLENS + tl.program_id(1) + 1) - start
    return head, start, seqlen, start.to(tl.int64) * stride_t + head * HEAD_DIM


@triton.jit
def program_rows(base, stride_t, seqlen, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK: tl.constexpr):
    """The program's block (grid axis 0) of BLOCK tokens of its segment: (offs [BLOCK], in_seg
    [BLOCK], element offsets [BLOCK, BLOCK_D], mask [BLOCK, BLOCK_D] inside segment and head)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    in_seg = offs < seqlen
    return (offs, in_seg, base + offs[:, None] * stride_t + offs_d[None, :],
            in_seg[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _attn_fwd_tiles(
    acc, l_i, m_i, q, K, V, base, stride_t, n_lo, n_hi, seqlen, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
):
    """Online-softmax update over the key tiles starting in [n_lo, n_hi). Only the PARTIAL tile
    (the segment's last, shorter one) pays for masking keys at or past `seqlen`."""
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
        if PARTIAL:
            s = tl.where(n_mask[None, :], s * qk_scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
        else:
            # c = qk_scale_log2 >= 0 (the host negates q for a negative scale), so the row max
            # of the scaled scores is the scaled row max and p = 2^(s·c − m) is one FMA + exp2.
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale_log2)
            p = tl.exp2(s * qk_scale_log2 - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + kv_offs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU_SEQLENS,
    stride_t, n_tokens, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    NEGATE_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen, base = program_segment(CU_SEQLENS, stride_t, HEAD_DIM)
    if tl.program_id(0) * BLOCK_M >= seqlen:
        return

    offs_m, m_mask, q_offs, row_mask = program_rows(base, stride_t, seqlen, HEAD_DIM, BLOCK_D,
                                                    BLOCK_M)
    q = tl.load(Q + q_offs, mask=row_mask, other=0.0)
    if NEGATE_Q:
        q = -q

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full_end = seqlen - seqlen % BLOCK_N
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, K, V, base, stride_t, 0, full_end, seqlen,
                                    qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION, BLOCK_N,
                                    PARTIAL=False)
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, K, V, base, stride_t, full_end, seqlen,
                                    seqlen, qk_scale_log2, HEAD_DIM, BLOCK_D, DOT_PRECISION,
                                    BLOCK_N, PARTIAL=True)
    # Every row saw key 0 of its segment, so m_i is finite and l_i >= 1.
    o = acc * (1.0 / l_i)[:, None]
    tl.store(O + q_offs, o.to(O.dtype.element_ty), mask=row_mask)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # ln 2: back to natural log
    tl.store(LSE + head * n_tokens + start + offs_m, lse, mask=m_mask)


_attn_fwd = autotuned_by_dtype(_attn_fwd_kernel, FWD_CONFIGS, FWD_FP32_CONFIGS,
                               FWD_INTERPRET_CONFIG)


def varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale):
    """o [T, H, Dh] (q's dtype) and lse [H, T] fp32 of softmax(scale·QKᵀ)V within each segment."""
    total, heads, head_dim = q.shape
    width = block_d(head_dim)
    o = torch.empty_like(q)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    segments = cu_seqlens.shape[0] - 1
    if total == 0 or segments == 0 or max_seqlen == 0:
        return o, lse

    def grid(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), segments, heads)

    _attn_fwd[q.dtype == torch.float32].launch(
        grid, max_seqlen, q, k, v, o, lse, cu_seqlens,
        heads * head_dim, total, abs(float(scale)) * LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=width, DOT_PRECISION=dot_precision(q.dtype),
        NEGATE_Q=float(scale) < 0,
    )
    return o, lse
