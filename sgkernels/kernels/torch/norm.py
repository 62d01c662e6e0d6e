"""rms_norm and rms_norm_modulate for the torch backend; math: sgkernels.ops.norm."""
import torch

from .segments import segment_sum


def _normalize(x, weight, eps):
    """(n = x̂·w in fp32, rstd) with x̂ = x·rstd, rstd = rsqrt(mean(x²) + eps) per row."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(-1) + eps)
    n = xf * rstd[:, None]
    return (n.mul_(weight) if weight is not None else n), rstd


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
    y = n.mul_((1.0 + scale.float()).index_select(0, seg))       # in place: n is a new tensor
    return y.add_(shift.float().index_select(0, seg)).to(x.dtype), rstd


def rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd):
    num_segments = scale.shape[0]
    dyf = dy.float()
    dx, dweight, xhat = _normalize_bwd(dyf * (1.0 + scale.float()[seg.long()]), x, weight, rstd)
    n = xhat * weight.float() if weight is not None else xhat
    dshift = segment_sum(dyf, seg, num_segments).to(x.dtype)
    dscale = segment_sum(dyf * n, seg, num_segments).to(x.dtype)
    return dx, dweight, dshift, dscale
