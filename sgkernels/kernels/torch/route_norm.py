"""route_gather_rms_norm_modulate for the torch backend, by composition of route_gather and
rms_norm_modulate; math: sgkernels.ops.route_norm."""
from .norm import rms_norm_modulate_bwd, rms_norm_modulate_fwd
from .routing import route_gather_fwd, route_scatter_fwd


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
