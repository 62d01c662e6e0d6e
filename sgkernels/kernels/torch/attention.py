"""varlen_attention for the torch backend; math: sgkernels.ops.attention.

Segments of equal length run together as fp32 [G, H, L, L] score batches, in chunks of at most
_ATTN_CHUNK_ELEMS elements; no N² tensor spans segments of different lengths. The grouping of a
cu_seqlens tensor is built once and reused while it is unchanged (runtime.memo): every block of
a packed forward, and its backward, attend over the same cu_seqlens.
"""
import torch

from sgkernels.runtime.memo import TensorMemo

from .rope import rotate, rotation

# Scores of one attention chunk are held in fp32; chunks of equal-length segments are sized so that
# [G, H, L, L] stays below this many elements (16 Mi elements = 64 MiB).
_ATTN_CHUNK_ELEMS = 1 << 24
_groups = TensorMemo()


def _length_groups(cu_seqlens):
    """[(L, token index [G, L] int64)] for each distinct non-zero segment length L, built once
    per cu_seqlens tensor and version.

    One host sync (the distinct lengths); the grouping itself is done with tensor ops.
    """
    return _groups.get(cu_seqlens, "length_groups", lambda: _build_groups(cu_seqlens))


def _build_groups(cu_seqlens):
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    groups = []
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        group_starts = starts[lengths == length]
        groups.append((length, group_starts[:, None] + torch.arange(length,
                                                                    device=starts.device)))
    return groups


def _chunks(tokens, heads, length):
    per_segment = heads * length * length
    step = max(1, _ATTN_CHUNK_ELEMS // per_segment)
    return tokens.split(step, dim=0)


def _heads_first(t, tok):
    """t [T, H, Dh], tok [G, L] -> fp32 [G, H, L, Dh]."""
    return t[tok].float().permute(0, 2, 1, 3)


def _rotated(q, k, rope, sign=1.0):
    """(q, k) rotated by rope = (pos, theta) (sign -1: the inverse rotation), or as given; the
    angles are computed once for both."""
    if rope is None:
        return q, k
    pos, theta = rope
    cos_sin = rotation(pos, theta, q.shape[-1], sign)
    return rotate(q, *cos_sin), rotate(k, *cos_sin)


def varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale, rope=None):
    """q, k, v may have any strides; rope = (pos, theta): attention of the rotated q, k (rounded
    to q's dtype after the rotation, as the Triton backend does)."""
    q, k = _rotated(q, k, rope)
    total, heads, dim = q.shape
    o = torch.zeros((total, heads, dim), dtype=q.dtype, device=q.device)
    lse = torch.full((heads, total), float("-inf"), dtype=torch.float32, device=q.device)
    for length, tokens in _length_groups(cu_seqlens):
        for tok in _chunks(tokens, heads, length):
            qg, kg, vg = _heads_first(q, tok), _heads_first(k, tok), _heads_first(v, tok)
            p = torch.matmul(qg, kg.transpose(-1, -2)).mul_(scale)          # S [G, H, L, L]
            row_max = p.amax(-1, keepdim=True)
            denom = p.sub_(row_max).exp_().sum(-1, keepdim=True)           # in place: one buffer
            og = torch.matmul(p.div_(denom), vg)                            # [G, H, L, Dh]
            flat = tok.reshape(-1)
            o[flat] = og.permute(0, 2, 1, 3).reshape(-1, heads, dim).to(q.dtype)
            lse[:, flat] = (row_max + denom.log()).squeeze(-1).permute(1, 0, 2).reshape(heads, -1)
    return o, lse


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, rope=None,
                         out=None):
    """Gradients of the unrotated q, k with rope (dq, dk of the rotated ones rounded to the
    dtype, then rotated back); out = (dq, dk, dv) tensors to write into (returned)."""
    q, k = _rotated(q, k, rope)
    total, heads, dim = q.shape
    dq, dk, dv = (torch.zeros((total, heads, dim), dtype=q.dtype, device=q.device)
                  for _ in range(3))
    for length, tokens in _length_groups(cu_seqlens):
        for tok in _chunks(tokens, heads, length):
            qg, kg, vg = _heads_first(q, tok), _heads_first(k, tok), _heads_first(v, tok)
            dog, og = _heads_first(do, tok), _heads_first(o, tok)
            lse_g = lse[:, tok].permute(1, 0, 2)[..., None]                 # [G, H, L, 1]
            p = torch.matmul(qg, kg.transpose(-1, -2)).mul_(scale).sub_(lse_g).exp_()
            dvg = torch.matmul(p.transpose(-1, -2), dog)
            delta = (dog * og).sum(-1, keepdim=True)                        # D = rowsum(dO∘O)
            ds = torch.matmul(dog, vg.transpose(-1, -2)).sub_(delta).mul_(p)  # P∘(dP − D)
            dqg = torch.matmul(ds, kg).mul_(scale)
            dkg = torch.matmul(ds.transpose(-1, -2), qg).mul_(scale)
            flat = tok.reshape(-1)
            for grad, part in ((dq, dqg), (dk, dkg), (dv, dvg)):
                grad[flat] = part.permute(0, 2, 1, 3).reshape(-1, heads, dim).to(grad.dtype)
    dq, dk = _rotated(dq, dk, rope, -1.0)
    if out is None:
        return dq, dk, dv
    for dst, src in zip(out, (dq, dk, dv)):
        dst.copy_(src)
    return out
