"""What the library backends of varlen_attention (kernels/flash, kernels/torch_varlen) share:
the calls they support, RoPE around the library's attention, and where the gradients go.

A library computes o = softmax(scale·QKᵀ)V within each segment (math: sgkernels.ops.attention)
and its logsumexp lse [H, T] fp32 (natural log): the contract of every backend
(docs/contracts.md, "Backends"), so a forward by one backend and a backward by another agree.
The libraries read q, k, v [T, H, Dh] with dense heads and features and any token stride, so
the slots of a [T, 3, H, Dh] qkv projection are read in place. Their gradients come back as
new tensors and are copied into `out` (e.g. the slots of one [T, 3, H, Dh] d(qkv)) when given.

RoPE (rope = (pos, theta)): q and k are rotated by the Triton backend's rope kernel
(rope.rotate_qk, the kernel of the op rope_axial; one launch for q and k) into a [T, 2, H, Dh]
buffer before the library sees them; the backward rotates them again and rotates dQ, dK back,
as the Triton attention does (kernels/triton/attention_fwd.py says why there is no saved copy).
"""
import functools

import torch

DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
MIN_CAPABILITY = (8, 0)   # FlashAttention-2 kernels: Ampere and newer


@functools.cache
def _capability(index):
    return torch.cuda.get_device_capability(index)


def capability(device):
    """(major, minor) compute capability of a CUDA device (cached per device index)."""
    return _capability(torch.cuda.current_device() if device.index is None else device.index)


def unsupported(q, scale, min_capability=MIN_CAPABILITY):
    """Why a library cannot run the attention of q [T, H, Dh] with this scale, or None.

    Supported: CUDA tensors on a GPU of compute capability >= min_capability, fp16 / bf16,
    Dh a multiple of 8 up to 256, scale > 0 (the kernels take the row maximum of the unscaled
    scores and mask keys with −inf before scaling, which a scale <= 0 breaks)."""
    if q.device.type != "cuda":
        return f"q must be a CUDA tensor, got a {q.device.type} tensor"
    if q.dtype not in DTYPES:
        return f"q must be fp16 or bf16, got {q.dtype}"
    head_dim = q.shape[-1]
    if head_dim % 8 or head_dim > MAX_HEAD_DIM:
        return (f"q's head dim Dh must be a multiple of 8 and at most {MAX_HEAD_DIM}, "
                f"got {head_dim}")
    if not scale > 0:
        return f"scale must be > 0, got {scale}"
    found = capability(q.device)
    if found < min_capability:
        return (f"q's device must have compute capability >= {min_capability[0]}."
                f"{min_capability[1]}, got {found[0]}.{found[1]}")
    return None


def _rotate_qk(*args, **kwargs):
    """The Triton backend's rope.rotate_qk (a sibling backend, imported on first use: the
    library backends import Triton only when RoPE is asked for)."""
    from sgkernels.kernels.triton.rope import rotate_qk

    return rotate_qk(*args, **kwargs)


def forward(library, attend, q, k, v, cu_seqlens, max_seqlen, scale, rope):
    """(o [T, H, Dh] contiguous, lse [H, T] fp32) of `attend(q, k, v, cu_seqlens, max_seqlen,
    scale) -> (o, lse)`, the library's call (named `library` in errors), on q, k rotated by
    rope first. An empty batch makes no library call."""
    total, heads, _ = q.shape
    if total == 0:
        return q.new_empty(q.shape), q.new_empty((heads, 0), dtype=torch.float32)
    if rope is not None:
        q, k = _rotate_qk(q, k, *rope)
    o, lse = attend(q, k, v, cu_seqlens, max_seqlen, scale)
    if lse.shape != (heads, total) or lse.dtype != torch.float32:
        raise RuntimeError(f"varlen_attention_fwd: {library} returned lse of shape "
                           f"{tuple(lse.shape)} and dtype {lse.dtype}, expected [H, T] = "
                           f"{(heads, total)} float32 (an unsupported version of {library})")
    return o.contiguous(), lse


def _put(dst, src):
    if dst is not src:
        dst.copy_(src)


def backward(grads, do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, rope, out):
    """(dq, dk, dv) from `grads(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale) -> (dq,
    dk, dv)`, the library's backward, on q, k rotated by rope (dq, dk then rotated back: the
    gradients of the unrotated q, k); written into out = (dq, dk, dv) when given (returned),
    else three new contiguous tensors."""
    if q.shape[0] == 0:
        return tuple(out) if out is not None else tuple(q.new_empty(q.shape) for _ in range(3))
    if rope is not None:
        q, k = _rotate_qk(q, k, *rope)
    dq, dk, dv = grads(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale)
    if out is None:
        dq, dk, dv = out = tuple(g.contiguous() for g in (dq, dk, dv))
    if rope is not None:
        _rotate_qk(dq, dk, *rope, out=out[:2], inverse=True)
    else:
        _put(out[0], dq)
        _put(out[1], dk)
    _put(out[2], dv)
    return tuple(out)
