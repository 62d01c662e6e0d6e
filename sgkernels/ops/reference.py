"""The torch backend of sgkernels.ops: plain PyTorch, no autograd, and the oracle of every kernel.

Every function here has the name and signature of docs/contracts.md ("Backends"); the Triton and
CUDA backends export the same functions. Inputs arrive validated, contiguous (swiglu: last dim
contiguous; attention: any token strides) and on one device. Statistics and accumulation run in
fp32; outputs are cast to the input dtype. Segment reductions (dshift, dscale, dgate) are
deterministic: `seg` is non-decreasing, so they are sorted-segment sums
(`torch.segment_reduce`), never float atomics.

Math (xf = x in fp32, r = rsqrt(mean(xf²) + eps), x̂ = xf·r, w = weight or 1):
    rms_norm            y = x̂·w
                        dx = r·g − x·r³·mean(g·x),  g = dy·w;   dw = Σ_rows dy·x̂
    rms_norm_modulate   n = x̂·w,  y = n·(1 + scale[seg]) + shift[seg]
                        g = dy·(1 + scale[seg])·w, dx as above; dshift = Σ_seg dy; dscale = Σ_seg dy·n
    gated_residual      out = x + gate[seg]·y;  dx = dout, dy = dout·gate[seg], dgate = Σ_seg dout·y
    swiglu              out = silu(a)·b,  σ = sigmoid(a)
                        db = dout·silu(a);  da = dout·b·σ·(1 + a·(1 − σ))
    route_gather        out = x[idx]
    route_scatter       out = base; out[idx] = y;  dbase = dout with rows idx zeroed, dy = dout[idx]
    route_gather_rms_norm_modulate   h = route_gather(x, idx), y = rms_norm_modulate(h)  (composed)
                        dx = route_scatter of (dh + rms_norm_modulate's dx) onto zeros
    varlen_attention    per segment: S = scale·QKᵀ, lse = logsumexp_row(S), P = exp(S − lse), O = PV
                        dV = PᵀdO, dP = dO Vᵀ, D = rowsum(dO∘O), dS = P∘(dP − D),
                        dQ = scale·dS K, dK = scale·dSᵀQ; q, k, v, do with any strides;
                        rope=(pos, theta) rotates q, k first (dq, dk rotated back); out=(dq, dk, dv)
    rope_axial          see `_rope`; backward rotates by the negative angle
"""
import torch

from sgkernels.kernels.rope_frequencies import rope_frequencies

# Scores of one attention chunk are held in fp32; chunks of equal-length segments are sized so that
# [G, H, L, L] stays below this many elements (16 Mi elements = 64 MiB).
_ATTN_CHUNK_ELEMS = 1 << 24


def _segment_sum(values, seg, num_segments):
    """Σ over rows of `values` [T, D] (fp32) grouped by the non-decreasing `seg` -> [S, D] fp32."""
    if values.shape[0] == 0:
        return values.new_zeros(num_segments, values.shape[1])
    lengths = torch.bincount(seg.long(), minlength=num_segments)
    return torch.segment_reduce(values, "sum", lengths=lengths, axis=0, unsafe=True)


def _normalize(x, weight, eps):
    """(n = x̂·w in fp32, rstd) with x̂ = x·rstd, rstd = rsqrt(mean(x²) + eps) per row."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(-1) + eps)
    n = xf * rstd[:, None]
    return (n * weight.float() if weight is not None else n), rstd


def _rms_dx(g, xf, rstd):
    """dx of x̂ = x·rstd given g = dL/dx̂ (fp32): r·g − x·r³·mean(g·x), the arrangement of
    PyTorch's own RMSNorm backward (rows with D = 1 are ill-conditioned: x̂² ≈ 1 cancels)."""
    r = rstd[:, None]
    return r * g - xf * (r * r * r) * (g * xf).mean(-1, keepdim=True)


def _normalize_bwd(dn, x, weight, rstd):
    """Gradients of n = x̂·w given dn = dL/dn (fp32): (dx, dweight | None) in x's dtype, and x̂."""
    xf = x.float()
    xhat = xf * rstd[:, None]
    g = dn * weight.float() if weight is not None else dn
    dx = _rms_dx(g, xf, rstd).to(x.dtype)
    dweight = (dn * xhat).sum(0).to(x.dtype) if weight is not None else None
    return dx, dweight, xhat


def rms_norm_fwd(x2d, weight, eps):
    y, rstd = _normalize(x2d, weight, eps)
    return y.to(x2d.dtype), rstd


def rms_norm_bwd(dy, x2d, weight, rstd):
    dx, dweight, _ = _normalize_bwd(dy.float(), x2d, weight, rstd)
    return dx, dweight


def rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps):
    n, rstd = _normalize(x, weight, eps)
    segl = seg.long()
    y = n * (1.0 + scale.float()[segl]) + shift.float()[segl]
    return y.to(x.dtype), rstd


def rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd):
    num_segments = scale.shape[0]
    dyf = dy.float()
    dx, dweight, xhat = _normalize_bwd(dyf * (1.0 + scale.float()[seg.long()]), x, weight, rstd)
    n = xhat * weight.float() if weight is not None else xhat
    dshift = _segment_sum(dyf, seg, num_segments).to(x.dtype)
    dscale = _segment_sum(dyf * n, seg, num_segments).to(x.dtype)
    return dx, dweight, dshift, dscale


def gated_residual_fwd(x, y, gate, seg):
    out = x.float() + gate.float()[seg.long()] * y.float()
    return out.to(x.dtype)


def gated_residual_bwd(dout, y, gate, seg):
    """dx is `dout` itself (the identity); callers must not write into it."""
    doutf = dout.float()
    dy = (doutf * gate.float()[seg.long()]).to(y.dtype)
    dgate = _segment_sum(doutf * y.float(), seg, gate.shape[0]).to(gate.dtype)
    return dout, dy, dgate


def swiglu_fwd(a, b):
    af = a.float()
    return (torch.nn.functional.silu(af) * b.float()).to(a.dtype)


def swiglu_bwd(dout, a, b, da, db):
    af, bf, doutf = a.float(), b.float(), dout.float()
    sig = torch.sigmoid(af)
    db.copy_(doutf * af * sig)
    da.copy_(doutf * bf * sig * (1.0 + af * (1.0 - sig)))


def route_gather_fwd(x, idx):
    return x.index_select(0, idx)


def route_scatter_fwd(base, y, idx):
    return base.index_copy(0, idx.long(), y)


def route_scatter_bwd(dout, idx):
    return dout.index_fill(0, idx.long(), 0), dout.index_select(0, idx)


def route_gather_rms_norm_modulate_fwd(x, idx, weight, shift, scale, seg, eps):
    """(h = x[idx], y = rms_norm_modulate(h), rstd) by composition; seg [K] are h's segments."""
    h = route_gather_fwd(x, idx)
    return (h, *rms_norm_modulate_fwd(h, weight, shift, scale, seg, eps))


def route_gather_rms_norm_modulate_bwd(dh, dy, h, idx, weight, scale, seg, rstd, total):
    """dx [total, D]: dh plus the norm's gradient at rows idx (summed as autograd would), 0
    elsewhere; and the norm's (dweight | None, dshift, dscale)."""
    dh_norm, dweight, dshift, dscale = rms_norm_modulate_bwd(dy, h, weight, scale, seg, rstd)
    dh_total = (dh.float() + dh_norm.float()).to(h.dtype)
    dx = route_scatter_fwd(h.new_zeros(total, h.shape[1]), dh_total, idx)
    return dx, dweight, dshift, dscale


def _length_groups(cu_seqlens):
    """Yield (L, token index [G, L] int64) for each distinct non-zero segment length L.

    One host sync (the distinct lengths); the grouping itself is done with tensor ops.
    """
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        group_starts = starts[lengths == length]
        tokens = group_starts[:, None] + torch.arange(length, device=starts.device)
        yield length, tokens


def _chunks(tokens, heads, length):
    per_segment = heads * length * length
    step = max(1, _ATTN_CHUNK_ELEMS // per_segment)
    return tokens.split(step, dim=0)


def _heads_first(t, tok):
    """t [T, H, Dh], tok [G, L] -> fp32 [G, H, L, Dh]."""
    return t[tok].float().permute(0, 2, 1, 3)


def _rotated(q, k, rope, sign=1.0):
    """(q, k) rotated by rope = (pos, theta) (sign -1: the inverse rotation), or as given."""
    if rope is None:
        return q, k
    pos, theta = rope
    return _rope(q, pos, theta, sign), _rope(k, pos, theta, sign)


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


def _rope(x, pos, theta, sign):
    """Rotate x [T, H, Dh] by sign·angle; channels [0, h) by pos[:, 0], [h, Dh) by pos[:, 1].

    Inside each half of size h, channel j pairs with j + h/2 at frequency theta^(-2j/h).
    """
    quarter = x.shape[-1] // 4
    freqs = rope_frequencies(theta, x.shape[-1], x.device)                # [h/2]
    angles = pos.float()[:, :, None] * freqs                              # [T, 2, h/2]
    cos = torch.cos(angles)[:, None]                                      # [T, 1, 2, h/2]
    sin = torch.sin(angles)[:, None] * sign
    xf = x.float().reshape(x.shape[0], x.shape[1], 2, 2, quarter)         # [T, H, axis, pair, h/2]
    x1, x2 = xf[:, :, :, 0], xf[:, :, :, 1]
    y = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=3)
    return y.reshape(x.shape).to(x.dtype)


def rope_axial_fwd(x, pos, theta):
    return _rope(x, pos, theta, 1.0)


def rope_axial_bwd(dy, pos, theta):
    return _rope(dy, pos, theta, -1.0)
