"""rope_axial for the Triton backend, forward and backward; math: sgkernels.ops.rope.

Angles are computed in fp32 from the shared frequency table (kernels/rope_frequencies.py); the
backward is the same kernel with sin negated (INVERSE). A program owns BLOCK_T tokens and HEADS
heads. It computes cos/sin once for its tokens as [BLOCK_T, 2 (axis), Q_PAD] fp32 tiles and
reuses them for every head; the two partners of each pair, x1 and x2, are loaded as two such
tiles (contiguous runs of Dh/4 channels, padded to a power of two Q_PAD with masks), so each
element is read and written exactly once. Memory-bound, the target is the device copy bandwidth.

Layout: x and y are [T, H, Dh] with dense head and feature dims (strides (·, Dh, 1)) and each its
own token stride, and y may be x (in place: a program reads both halves of a pair before it
writes them, and no two programs touch the same element). That is what attention's RoPE
pre-pass needs (`rotate_qk`): q and k of a packed [T, 3, H, Dh] qkv projection are the 2H heads
of one [T, 2H, Dh] view with token stride 3·H·Dh, so one launch rotates both, read in place,
into a [T, 2, H, Dh] buffer (forward) or in place (the backward's dq, dk slots of d(qkv)).
Strides stay specialized: with 16-byte aligned pointers and Dh/4 a multiple of 8 (16-bit) or 4
(fp32) elements, every access is 128 bits wide (Dh 64, 128; Dh 72's 18-element quarters allow
64 bits).
"""

import torch
import triton
import triton.language as tl

from ..rope_frequencies import rope_frequencies
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
    X, POS, FREQ, Y, stride_xt, stride_yt, n_tokens, n_heads,
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

    chan = axis[None, :, None] * HALF + j[None, None, :]
    x_offs = tokens.to(tl.int64)[:, None, None] * stride_xt + chan
    y_offs = tokens.to(tl.int64)[:, None, None] * stride_yt + chan
    mask = t_mask[:, None, None] & (j < QUARTER)[None, None, :]
    head_end = tl.minimum(tl.program_id(1) * HEADS + HEADS, n_heads)
    for head in range(tl.program_id(1) * HEADS, head_end):
        x1 = tl.load(X + x_offs + head * HEAD_DIM, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + x_offs + head * HEAD_DIM + QUARTER, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + y_offs + head * HEAD_DIM, (x1 * cos - x2 * sin).to(Y.dtype.element_ty),
                 mask=mask)
        tl.store(Y + y_offs + head * HEAD_DIM + QUARTER,
                 (x2 * cos + x1 * sin).to(Y.dtype.element_ty), mask=mask)


# restore Y: the autotuner times every config on the launch's own tensors, and an in-place
# rotation (Y is X) must not be applied once per timed run.
_rope_axial = Autotuned(_rope_axial_kernel, ROPE_CONFIGS, ["HEAD_DIM", "n_heads"],
                        ROPE_INTERPRET_CONFIG, restore=["Y"])


def check_layout(op, **tensors):
    """Each [T, H, Dh] tensor must have dense head and feature dims (strides (·, Dh, 1)); the
    token stride is free."""
    for name, t in tensors.items():
        _, heads, head_dim = t.shape
        if (head_dim > 1 and t.stride(2) != 1) or (heads > 1 and t.stride(1) != head_dim):
            raise ValueError(f"{op}: {name} must have strides (any, Dh, 1) = (any, {head_dim}, 1) "
                             f"(dense heads and features), got {tuple(t.stride())}")


def rope_axial(x, pos, theta, inverse=False, out=None):
    """x [T, H, Dh] rotated by the axial angles of pos [T, 2] (contiguous; inverse: by the
    negative angles) into `out` [T, H, Dh] (any token stride; may be x itself: in place) or a
    new contiguous tensor, returned. x may have any token stride; heads and features dense."""
    total, heads, head_dim = x.shape
    y = torch.empty((total, heads, head_dim), dtype=x.dtype, device=x.device) if out is None \
        else out
    check_layout("rope_axial", x=x, out=y)
    if y.shape != x.shape:
        raise ValueError(f"rope_axial: out must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(y.shape)}")
    if y.numel() == 0:
        return y

    q_pad = triton.next_power_of_2(head_dim // 4)

    def grid(meta):
        return (triton.cdiv(total, meta["TILE"] // (2 * q_pad)), triton.cdiv(heads, meta["HEADS"]))

    _rope_axial.launch(
        grid, total, x, pos, rope_frequencies(float(theta), head_dim, x.device), y,
        x.stride(0), y.stride(0), total, heads,
        HEAD_DIM=head_dim, Q_PAD=q_pad, INVERSE=inverse,
    )
    return y


def rope_axial_fwd(x, pos, theta, out=None):
    """y = x rotated by the axial angles of `pos` (x [T, H, Dh], pos [T, 2] contiguous); out:
    as in `rope_axial`."""
    return rope_axial(x, pos, theta, False, out)


def rope_axial_bwd(dy, pos, theta, out=None):
    """dx = dy rotated by the negative angles (the transpose of the forward rotation)."""
    return rope_axial(dy, pos, theta, True, out)


def _heads_of_one_view(a, b):
    """[T, 2H, Dh] view whose heads [0, H) are a and [H, 2H) are b, when b starts right after
    a's heads at the same token stride (q and k of one [T, 3, H, Dh] qkv, or the dq, dk slots of
    its gradient); else None."""
    total, heads, head_dim = a.shape
    step = heads * head_dim * a.element_size()
    if (b.shape != a.shape or b.dtype != a.dtype or b.device != a.device
            or b.stride() != a.stride() or b.data_ptr() - a.data_ptr() != step):
        return None
    return a.as_strided((total, 2 * heads, head_dim), (a.stride(0), head_dim, 1))


def rotate_qk(q, k, pos, theta, out=None, inverse=False):
    """(q, k) [T, H, Dh] (any token strides, dense heads and features) rotated by pos, theta
    (inverse: by the negative angles), into `out` = (q_out, k_out) (may be q, k themselves: in
    place) or into the two slots of a new [T, 2, H, Dh] buffer. One launch when q, k and the
    outputs are each two adjacent slots of one tensor (`_heads_of_one_view`), else two."""
    total, heads, head_dim = q.shape
    if out is None:
        buf = torch.empty((total, 2, heads, head_dim), dtype=q.dtype, device=q.device)
        out = buf.unbind(1)
    if q.numel() == 0:
        return tuple(out)
    src, dst = _heads_of_one_view(q, k), _heads_of_one_view(*out)
    if src is not None and dst is not None:
        rope_axial(src, pos, theta, inverse, dst)
    else:
        rope_axial(q, pos, theta, inverse, out[0])
        rope_axial(k, pos, theta, inverse, out[1])
    return tuple(out)


def static_specs():
    """Forward (backward differs only in a sign) at Dh 64/72/128, bf16 x, token strides
    divisible by 16 (H·Dh, or 3·H·Dh for attention's q, k; n_tokens unhinted), int64 pos (the
    ops' tests) and int32 pos (`_pos32`: TokenBatch.pos, attention's pre-pass)."""
    specs = []
    for pos in ("i64", "i32"):
        signature = {"X": "*bf16", "POS": f"*{pos}", "FREQ": "*fp32", "Y": "*bf16",
                     "stride_xt": "i32", "stride_yt": "i32", "n_tokens": "i32", "n_heads": "i32"}
        tag = "_pos32" if pos == "i32" else ""
        for head_dim in (64, 72, 128):
            shape = {"HEAD_DIM": head_dim, "Q_PAD": triton.next_power_of_2(head_dim // 4),
                     "INVERSE": False}
            specs += _rope_axial.specs(signature, shape, list(signature), f"{tag}_d{head_dim}")
    return specs
