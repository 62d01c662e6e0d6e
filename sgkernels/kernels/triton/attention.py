"""varlen_attention for the Triton backend: FlashAttention-2 forward and backward; math:
sgkernels.ops.attention. lse is the natural-log logsumexp, saved [H, T] fp32; segments of
length 0 own no rows and launch nothing.

Algorithm (FlashAttention-2, Dao 2023): the grid is (blocks of max_seqlen, segments, heads) and
each program reads its segment's bounds from cu_seqlens, so one launch covers a packed batch of
unequal segments without padding or an N² score matrix in memory. The forward keeps an online
softmax over key tiles (attention_fwd.py); the backward recomputes P from lse, with one kernel
for dK/dV (a key tile iterates over the query tiles of its segment) and one for dQ (a query
tile iterates over the key tiles), after a D = rowsum(dO∘O) preprocess: no atomics, so the
gradients are deterministic (attention_bwd.py). Products run on tensor cores (wgmma on sm_90a)
for fp16/bf16 with fp32 accumulation; fp32 inputs use 3xTF32 products (~fp32 accurate) and
16-row mma.sync tiles (correctness, not speed; spill-free). Head dims up to 128 are padded
inside the kernel, never in memory, to two power-of-two register blocks (attention_fwd.head_split:
72 -> 64 + 16 = 80, 96 -> 64 + 32; fp32: one block, 72 -> 128).
q, k, v, o, dO, dQ, dK, dV each have their own token stride (dense heads and features), so the
packed op (ops.varlen_attention_qkv) reads q, k, v in place from one [T, 3, H, Dh] projection and
writes dQ, dK, dV into one [T, 3, H, Dh] gradient; rope=(pos, theta) adds axial RoPE of q, k
(a rotation pre-pass by rope.py's kernel, one launch for q and k; the backward rotates dQ, dK
back in place): attention_fwd.py says why.

Roofline (sgkernels.ops.attention): intensity ≈ L/e FLOP/byte forward (e bytes per element):
with bf16 on an H100 (989 TFLOP/s dense, 3.35 TB/s) the ridge is near L ≈ 600; SiT's L = 256
sits below it and TR-DiT's ~1-4k above. Targets are measured as TFLOP/s against
FlashAttention-2 (torch varlen_attn).
"""
import torch

from .attention_bwd import (
    PREPROCESS_ROWS,
    _attn_bwd_dkdv,
    _attn_bwd_dq,
    _attn_bwd_preprocess_kernel,
    preprocess_block_d,
    varlen_attention_bwd,
)
from .attention_fwd import _attn_fwd, dot_precision, head_split, varlen_attention_fwd
from .launch import ast_spec

__all__ = ["static_specs", "varlen_attention_bwd", "varlen_attention_fwd"]

SPEC_HEAD_DIMS = (64, 72, 128)


def static_specs():
    """Forward, dK/dV and dQ kernels under every config of their bf16 lists (names
    `<kernel>_d<Dh>[<config>]`) and of their fp32 (3xTF32) lists (`<kernel>_fp32_d<Dh>[<config>]`,
    one power-of-two head block: `head_split`), and the preprocess (bf16 and fp32), at Dh
    64/72/128, as a real launch specializes them: pointers 16-byte aligned, token strides (H·Dh or
    3·H·Dh) divisible by 16 (SiT: H 16); token counts (do_not_specialize) and float scales
    unhinted. The RoPE pre-pass is rope.py's kernel, checked there."""
    i32 = "i32"

    def aligned(sig):
        return [name for name, ty in sig.items() if ty != "fp32"]

    specs = []
    for dtype in (torch.bfloat16, torch.float32):
        fp32 = dtype == torch.float32
        ptr, name = ("*fp32", "_fp32") if fp32 else ("*bf16", "")
        fwd = {"Q": ptr, "K": ptr, "V": ptr, "O": ptr, "LSE": "*fp32", "CU_SEQLENS": "*i32",
               "stride_qt": i32, "stride_kt": i32, "stride_vt": i32, "stride_ot": i32,
               "n_tokens": i32, "qk_scale_log2": "fp32"}
        bwd = {"Q": ptr, "K": ptr, "V": ptr, "DO": ptr, "LSE": "*fp32", "DELTA": "*fp32"}
        strides = {"stride_qt": i32, "stride_kt": i32, "stride_vt": i32, "stride_dot": i32}
        tail = {"n_tokens": i32, "sm_scale": "fp32", "qk_scale_log2": "fp32"}
        dkdv = {**bwd, "DK": ptr, "DV": ptr, "CU_SEQLENS": "*i32", **strides, "stride_dkt": i32,
                "stride_dvt": i32, **tail}
        dq = {**bwd, "DQ": ptr, "CU_SEQLENS": "*i32", **strides, "stride_dqt": i32, **tail}
        pre = {"O": ptr, "DO": ptr, "DELTA": "*fp32", "stride_ot": i32, "stride_dot": i32,
               "n_rows": i32, "n_heads": i32, "n_tokens": i32}
        for head_dim in SPEC_HEAD_DIMS:
            d_a, d_b = head_split(head_dim, fp32)
            mma = {"HEAD_DIM": head_dim, "D_A": d_a, "D_B": d_b,
                   "DOT_PRECISION": dot_precision(dtype)}
            tag = f"_d{head_dim}"
            specs += _attn_fwd[fp32].specs(fwd, {**mma, "NEGATE_Q": False}, aligned(fwd), tag)
            specs += _attn_bwd_dkdv[fp32].specs(dkdv, mma, aligned(dkdv), tag)
            specs += _attn_bwd_dq[fp32].specs(dq, mma, aligned(dq), tag)
            specs.append(ast_spec(
                _attn_bwd_preprocess_kernel, pre,
                {"HEAD_DIM": head_dim, "BLOCK_D": preprocess_block_d(head_dim),
                 "BLOCK_R": PREPROCESS_ROWS}, aligned(pre), 4, 1,
                _attn_bwd_preprocess_kernel.__name__ + name + tag))
    return specs
