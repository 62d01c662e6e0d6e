"""Axial rotary position embedding (RoPE) for the Triton backend, forward and backward.

Math (docs/contracts.md), x [T, H, Dh] with Dh % 4 == 0, h = Dh/2, q = Dh/4, pos [T, 2]:
    channels [0, h) rotate by the row position pos[:, 0], channels [h, Dh) by the column
    position pos[:, 1]; inside half a ∈ {0, 1}, channel a·h + j pairs with a·h + j + q,
    f_j = theta^(−2j/h),  φ = pos[:, a]·f_j (fp32, as the reference),  j ∈ [0, q):
        y1 = x1·cos φ − x2·sin φ,   y2 = x2·cos φ + x1·sin φ
The backward is the rotation by −φ (the transpose of an orthogonal map): the same kernel with
sin negated (INVERSE).

Kernel: a program owns BLOCK_T tokens and HEADS heads. It computes cos/sin once for its tokens
as [BLOCK_T, 2 (axis), Q_PAD] fp32 tiles and reuses them for every head; x1 and x2 are loaded as
two such tiles (contiguous runs of q channels, padded to a power of two Q_PAD with masks), so
each element is read and written exactly once. Memory-bound: bytes = 2·T·H·Dh·itemsize
(+ pos), FLOPs negligible; the target is the device copy bandwidth.
"""
import functools

import torch
import triton
import triton.language as tl

from .launch import Autotuned

# TILE = BLOCK_T·2·Q_PAD elements per head, 8 per thread: 128-bit loads and stores, and no spills
# in the sin/cos range reduction (16 per thread spill at Dh 128). 8 warps (TILE 2048) spill at
# Dh 72 with the ptxas of Triton 3.9, so no config has 8.
ROPE_CONFIGS = [
    ({"TILE": 1024, "HEADS": 4}, 4, 1),
    ({"TILE": 512, "HEADS": 8}, 2, 1),
]
ROPE_INTERPRET_CONFIG = ({"TILE": 512, "HEADS": 2}, 1, 1)


@triton.jit(do_not_specialize=["n_tokens"])
def _rope_axial_kernel(
    X, POS, FREQ, Y, n_tokens, n_heads,
    HEAD_DIM: tl.constexpr, Q_PAD: tl.constexpr, INVERSE: tl.constexpr,
    TILE: tl.constexpr, HEADS: tl.constexpr,
):
    BLOCK_T: tl.constexpr = TILE // (2 * Q_PAD)
    HALF: tl.constexpr = HEAD_DIM // 2
    QUARTER: tl.constexpr = HEAD_DIM // 4
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    axis = tl.arange(0, 2)
    j = tl.arange(0, Q_PAD)
    t_mask = tokens < n_tokens

    pos = tl.load(POS + tokens[:, None] * 2 + axis[None, :], mask=t_mask[:, None], other=0)
    freq = tl.load(FREQ + j, mask=j < QUARTER, other=0.0)
    angle = pos.to(tl.float32)[:, :, None] * freq[None, None, :]          # [BLOCK_T, 2, Q_PAD]
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    if INVERSE:
        sin = -sin

    offs = (tokens.to(tl.int64)[:, None, None] * (n_heads * HEAD_DIM)
            + axis[None, :, None] * HALF + j[None, None, :])
    mask = t_mask[:, None, None] & (j < QUARTER)[None, None, :]
    head_end = tl.minimum(tl.program_id(1) * HEADS + HEADS, n_heads)
    for head in range(tl.program_id(1) * HEADS, head_end):
        x_offs = offs + head * HEAD_DIM
        x1 = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + x_offs + QUARTER, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + x_offs, (x1 * cos - x2 * sin).to(Y.dtype.element_ty), mask=mask)
        tl.store(Y + x_offs + QUARTER, (x2 * cos + x1 * sin).to(Y.dtype.element_ty), mask=mask)


_rope_axial = Autotuned(_rope_axial_kernel, ROPE_CONFIGS, ["HEAD_DIM", "n_heads"],
                        ROPE_INTERPRET_CONFIG)


@functools.lru_cache(maxsize=64)
def _frequencies(theta, head_dim, device):
    """The reference's f_j = theta^(-2j/h) [Dh/4] fp32, built once per (theta, Dh, device), so a
    call allocates only its output."""
    from sgkernels.ops import reference  # the ops layer imports the backends: import on use

    return reference.rope_frequencies(theta, head_dim, device)


def _rope(x, pos, theta, inverse):
    total, heads, head_dim = x.shape
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y

    q_pad = triton.next_power_of_2(head_dim // 4)

    def grid(meta):
        return (triton.cdiv(total, meta["TILE"] // (2 * q_pad)), triton.cdiv(heads, meta["HEADS"]))

    _rope_axial.launch(
        grid, total, x, pos, _frequencies(float(theta), head_dim, x.device), y, total, heads,
        HEAD_DIM=head_dim, Q_PAD=q_pad, INVERSE=inverse,
    )
    return y


def rope_axial_fwd(x, pos, theta):
    """y = x rotated by the axial angles of `pos` (x [T, H, Dh], pos [T, 2] contiguous)."""
    return _rope(x, pos, theta, False)


def rope_axial_bwd(dy, pos, theta):
    """dx = dy rotated by the negative angles (the transpose of the forward rotation)."""
    return _rope(dy, pos, theta, True)


def static_specs():
    """Forward (backward differs only in a sign) at Dh 64/72/128, bf16 x, int64 pos."""
    signature = {"X": "*bf16", "POS": "*i64", "FREQ": "*fp32", "Y": "*bf16", "n_tokens": "i32",
                 "n_heads": "i32"}
    specs = []
    for head_dim in (64, 72, 128):
        shape = {"HEAD_DIM": head_dim, "Q_PAD": triton.next_power_of_2(head_dim // 4),
                 "INVERSE": False}
        specs += _rope_axial.specs(signature, shape, list(signature), f"_d{head_dim}")
    return specs
