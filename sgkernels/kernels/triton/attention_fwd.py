"""Forward kernel of varlen attention (FlashAttention-2 tiling); math: sgkernels.ops.attention.

One program owns BLOCK_M query rows of one segment and one head. It streams the segment's keys
and values in BLOCK_N tiles and keeps the online-softmax state in fp32 registers, in base 2
(c = |scale|·log2 e; a negative scale negates q instead, so that c ≥ 0 and max commutes with ·c):

    s   = q·kᵀ                            m' = max(m, c·rowmax s)    p = 2^(c·s − m')  (one FMA)
    l   = l·2^(m − m') + rowsum p         acc = acc·2^(m − m') + p·v  (p cast to v's dtype)
    o   = acc / l                         lse = (m + log2 l)·ln 2    (natural log, saved)

Full key tiles run unmasked; only a segment's last, partial tile masks keys (score −inf).

Head split: tl.arange and tl.dot need power-of-two widths (K a multiple of 16), so a head row is
held as two register blocks, channels [0, D_A) and [D_A, D_A + D_B) (`head_split`), and every
product is the sum of two dots: Dh 72 runs as 64 + 16 (padded width 80, where one power-of-two
block would need 128: 1.6x the tensor-core work; FlashAttention pads 72 to 96). Powers of two
keep one block (D_B = 0). The pad channels load as zeros and add nothing to q·kᵀ or p·v.

Memory layout: q, k, v, o (and dO, dQ, dK, dV in the backward) are [T, H, Dh] with dense head
and feature dims and each its own token stride, so q, k, v are read in place from the [T, 3, H,
Dh] output of a qkv projection and the gradients are written straight into one [T, 3, H, Dh]
buffer (ops.varlen_attention_qkv). Strides stay specialized (divisible by 16): together with the
16-byte aligned base pointers that is what lets the compiler emit 128-bit loads of each row.
Token counts are not specialized (`TOKEN_ARGS`), so a new routed token count reuses the binary.

Axial RoPE (rope=(pos, theta)): the public rope kernel (rope.rotate_qk, one launch of
rope.py's kernel over q and k as the 2H heads of one strided view of qkv) rotates q and k, read
in place, into one [T, 2, H, Dh] buffer before the attention; the backward recomputes it (saving
it would keep 2·T·H·Dh more elements alive per layer until the backward, on top of the saved
qkv) and rotates dQ, dK back in place. Rotating inside the attention loops instead would put
sin/cos of every streamed k (q in dK/dV) tile on the special-function unit that the softmax exp2
already saturates, and the rotate-half partner of channel j (j ± Dh/4, 18 apart at Dh 72)
crosses the 64 + 16 blocks.
"""
import math

import torch
import triton
import triton.language as tl

from .launch import Autotuned
from .rope import check_layout, rotate_qk

LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 128
# Kernel arguments that change with the routed token count: never specialized (a new count must
# not compile a new binary); also left without a divisibility hint in the static specs.
TOKEN_ARGS = ["n_tokens"]


def autotuned_by_dtype(kernel, configs_16bit, configs_fp32, interpret_config, prune_16bit=None):
    """{is_fp32: kernel autotuned (keyed on the head dim and the size bucket of max_seqlen) over
    that dtype class's configs}; `prune_16bit`: the fp16/bf16 list's prune (launch.Autotuned).

    fp32 tiles take twice the registers and shared memory of fp16/bf16 ones (and 3xTF32 products
    hold hi/lo parts), so fp32 gets smaller tiles of its own.
    """
    return {fp32: Autotuned(kernel, configs, ["HEAD_DIM", "D_A", "D_B"], interpret_config,
                            prune=None if fp32 else prune_16bit,
                            name=kernel.__name__ + ("_fp32" if fp32 else ""))
            for fp32, configs in ((False, configs_16bit), (True, configs_fp32))}


def head_split(head_dim, fp32=False):
    """(D_A, D_B): register widths of the two blocks of a head row, each a power of two >= 16
    (the smallest tl.dot K) or D_B = 0. D_A is the largest power of two <= Dh; the second block
    is kept only where D_A + D_B is narrower than one power-of-two block (72 -> 64 + 16,
    96 -> 64 + 32, 40 -> 32 + 16; 100 -> 128 + 0).

    fp32 (3xTF32) always takes one block (72 -> 128 + 0): there every product is three tf32 dots
    over hi/lo parts of both operands, and the sums of two dots of a split row held so many of
    them live that every fp32 tile tried spilled at Dh 72 (0.5-3 KB with 16-row tiles), while
    the same tiles are spill-free on one 128 block (the Dh 128 case); fp32 is for correctness,
    not speed, so the padded channels cost nothing that matters."""
    if not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"varlen_attention: head dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    whole = max(16, triton.next_power_of_2(head_dim))
    d_a = max(16, 1 << (head_dim.bit_length() - 1))
    if fp32 or d_a >= head_dim:
        return whole, 0
    d_b = max(16, triton.next_power_of_2(head_dim - d_a))
    return (d_a, d_b) if d_a + d_b < whole else (whole, 0)


def block_d(head_dim, fp32=False):
    """Padded register width of one head row (D_A + D_B)."""
    return sum(head_split(head_dim, fp32))


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
# fp32 (3xTF32; correctness, not speed): 16-row mma.sync tiles on one power-of-two head block
# (`head_split`). The hi/lo parts of the held q live in registers across the key loop; 64-row
# wgmma tiles spill 140-600 B at Dh 128 (BLOCK_N 16 or 32, 4 or 8 warps), 32-row tiles 36-160 B.
# These are spill-free at Dh 64/72/128 with Triton 3.6 and 3.9 (at most 233 registers).
FWD_FP32_CONFIGS = [
    ({"BLOCK_M": 16, "BLOCK_N": 32}, 4, 2),
    ({"BLOCK_M": 16, "BLOCK_N": 16}, 4, 2),
]
FWD_INTERPRET_CONFIG = ({"BLOCK_M": 32, "BLOCK_N": 16}, 4, 1)


@triton.jit
def program_segment(CU_SEQLENS):
    """(head, start, seqlen) of the program's segment (grid axis 1) and head (grid axis 2)."""
    head = tl.program_id(2)
    start = tl.load(CU_SEQLENS + tl.program_id(1))
    seqlen = tl.load(CU_SEQLENS + tl.program_id(1) + 1) - start
    return head, start, seqlen


@triton.jit
def head_rows(X, start, head, stride_t, HEAD_DIM: tl.constexpr):
    """Pointer to channel 0 of token `start` at `head` of a [T, H, Dh] tensor (64-bit offset;
    offsets inside a segment stay 32-bit: L·stride < 2^31, and fewer registers than 64-bit ones
    at Dh 64/72 on sm_90a)."""
    return X + start.to(tl.int64) * stride_t + head * HEAD_DIM


@triton.jit
def load_part(X, rows, row_ok, stride_t, LO: tl.constexpr, WIDTH: tl.constexpr,
              HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr):
    """[len(rows), WIDTH] block of channels LO .. LO + WIDTH of `rows` (zeros past the head and,
    with MASK_ROWS, at rows where row_ok is False)."""
    cols = LO + tl.arange(0, WIDTH)
    ptrs = X + rows[:, None] * stride_t + cols[None, :]
    if LO + WIDTH > HEAD_DIM:
        if MASK_ROWS:
            return tl.load(ptrs, mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
        return tl.load(ptrs, mask=(cols < HEAD_DIM)[None, :], other=0.0)
    if MASK_ROWS:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def load_parts(X, rows, row_ok, stride_t, D_A: tl.constexpr, D_B: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """(a, b): the [len(rows), D_A] and [len(rows), D_B] channel blocks of `rows` (zeros past the
    head and at rows where row_ok is False); without a second block (D_B = 0) b is a, an unread
    placeholder."""
    a = load_part(X, rows, row_ok, stride_t, 0, D_A, HEAD_DIM, True)
    b = a
    if D_B > 0:
        b = load_part(X, rows, row_ok, stride_t, D_A, D_B, HEAD_DIM, True)
    return a, b


@triton.jit
def zero_parts(ROWS: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr):
    """fp32 accumulators [ROWS, D_A] and [ROWS, D_B] (b is a, unread, when D_B = 0)."""
    a = tl.zeros([ROWS, D_A], dtype=tl.float32)
    b = a
    if D_B > 0:
        b = tl.zeros([ROWS, D_B], dtype=tl.float32)
    return a, b


@triton.jit
def store_part(X, rows, row_ok, stride_t, value, LO: tl.constexpr, WIDTH: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """Store a [len(rows), WIDTH] block at channels LO .. LO + WIDTH of the rows where row_ok."""
    cols = LO + tl.arange(0, WIDTH)
    ptrs = X + rows[:, None] * stride_t + cols[None, :]
    value = value.to(X.dtype.element_ty)
    if LO + WIDTH > HEAD_DIM:
        tl.store(ptrs, value, mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :])
    else:
        tl.store(ptrs, value, mask=row_ok[:, None])


@triton.jit
def _attn_fwd_tiles(
    acc_a, acc_b, l_i, m_i, q_a, q_b, K, V, stride_kt, stride_vt, n_lo, n_hi, seqlen,
    qk_scale_log2, HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
):
    """Online-softmax update over the key tiles starting in [n_lo, n_hi). Only the PARTIAL tile
    (the segment's last, shorter one) pays for masking keys at or past `seqlen`."""
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        keys = n0 + offs_n
        n_ok = keys < seqlen
        k_a = load_part(K, keys, n_ok, stride_kt, 0, D_A, HEAD_DIM, PARTIAL)
        s = tl.dot(q_a, tl.trans(k_a), input_precision=DOT_PRECISION)
        if D_B > 0:
            k_b = load_part(K, keys, n_ok, stride_kt, D_A, D_B, HEAD_DIM, PARTIAL)
            s = tl.dot(q_b, tl.trans(k_b), s, input_precision=DOT_PRECISION)
        if PARTIAL:
            s = tl.where(n_ok[None, :], s * qk_scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
        else:
            # c = qk_scale_log2 >= 0 (the host negates q for a negative scale), so the row max
            # of the scaled scores is the scaled row max and p = 2^(s·c − m) is one FMA + exp2.
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale_log2)
            p = tl.exp2(s * qk_scale_log2 - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_a = load_part(V, keys, n_ok, stride_vt, 0, D_A, HEAD_DIM, PARTIAL)
        p = p.to(v_a.dtype)
        acc_a = tl.dot(p, v_a, acc_a * alpha[:, None], input_precision=DOT_PRECISION)
        if D_B > 0:
            v_b = load_part(V, keys, n_ok, stride_vt, D_A, D_B, HEAD_DIM, PARTIAL)
            acc_b = tl.dot(p, v_b, acc_b * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc_a, acc_b, l_i, m_i


@triton.jit(do_not_specialize=TOKEN_ARGS)
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU_SEQLENS,
    stride_qt, stride_kt, stride_vt, stride_ot, n_tokens, qk_scale_log2,
    HEAD_DIM: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, DOT_PRECISION: tl.constexpr,
    NEGATE_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    head, start, seqlen = program_segment(CU_SEQLENS)
    if tl.program_id(0) * BLOCK_M >= seqlen:
        return
    Q = head_rows(Q, start, head, stride_qt, HEAD_DIM)
    K = head_rows(K, start, head, stride_kt, HEAD_DIM)
    V = head_rows(V, start, head, stride_vt, HEAD_DIM)
    O = head_rows(O, start, head, stride_ot, HEAD_DIM)

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen
    q_a, q_b = load_parts(Q, rows, row_ok, stride_qt, D_A, D_B, HEAD_DIM)
    if NEGATE_Q:
        q_a, q_b = -q_a, -q_b
    acc_a, acc_b = zero_parts(BLOCK_M, D_A, D_B)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    full_end = seqlen - seqlen % BLOCK_N
    acc_a, acc_b, l_i, m_i = _attn_fwd_tiles(
        acc_a, acc_b, l_i, m_i, q_a, q_b, K, V, stride_kt, stride_vt, 0, full_end, seqlen,
        qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_N, PARTIAL=False)
    acc_a, acc_b, l_i, m_i = _attn_fwd_tiles(
        acc_a, acc_b, l_i, m_i, q_a, q_b, K, V, stride_kt, stride_vt, full_end, seqlen, seqlen,
        qk_scale_log2, HEAD_DIM, D_A, D_B, DOT_PRECISION, BLOCK_N, PARTIAL=True)
    # Every row saw key 0 of its segment, so m_i is finite and l_i >= 1.
    inv_l = 1.0 / l_i
    store_part(O, rows, row_ok, stride_ot, acc_a * inv_l[:, None], 0, D_A, HEAD_DIM)
    if D_B > 0:
        store_part(O, rows, row_ok, stride_ot, acc_b * inv_l[:, None], D_A, D_B, HEAD_DIM)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # ln 2: back to natural log
    tl.store(LSE + head * n_tokens + start + rows, lse, mask=row_ok)


_attn_fwd = autotuned_by_dtype(_attn_fwd_kernel, FWD_CONFIGS, FWD_FP32_CONFIGS,
                               FWD_INTERPRET_CONFIG)


def varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale, rope=None):
    """o [T, H, Dh] (q's dtype, contiguous) and lse [H, T] fp32 of softmax(scale·QKᵀ)V within
    each segment. q, k, v: any token strides, dense heads and features (`check_layout`).
    rope = (pos [T, 2], theta): attention of q and k rotated by rope_axial(·, pos, theta)."""
    total, heads, head_dim = q.shape
    check_layout("varlen_attention_fwd", q=q, k=k, v=v)
    d_a, d_b = head_split(head_dim, q.dtype == torch.float32)
    o = torch.empty((total, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    segments = cu_seqlens.shape[0] - 1
    if total == 0 or segments == 0 or max_seqlen == 0:
        return o, lse
    if rope is not None:
        q, k = rotate_qk(q, k, *rope)

    def grid(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), segments, heads)

    _attn_fwd[q.dtype == torch.float32].launch(
        grid, max_seqlen, q, k, v, o, lse, cu_seqlens,
        q.stride(0), k.stride(0), v.stride(0), o.stride(0), total, abs(float(scale)) * LOG2E,
        HEAD_DIM=head_dim, D_A=d_a, D_B=d_b, DOT_PRECISION=dot_precision(q.dtype),
        NEGATE_Q=float(scale) < 0,
    )
    return o, lse
