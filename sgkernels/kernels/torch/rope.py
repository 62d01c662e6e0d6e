"""rope_axial for the torch backend; math: sgkernels.ops.rope. Angles are computed in fp32 from
the frequency table every backend shares (kernels/rope_frequencies.py)."""
import torch

from ..rope_frequencies import rope_frequencies


def rotation(pos, theta, head_dim, sign):
    """(cos a, sign · sin a) [T, 1, 2, h/2] fp32 of the angles a = pos · f_j of each token."""
    freqs = rope_frequencies(theta, head_dim, pos.device)                 # [h/2]
    angles = pos.float()[:, :, None] * freqs                              # [T, 2, h/2]
    return torch.cos(angles)[:, None], torch.sin(angles)[:, None] * sign


def rotate(x, cos, sin):
    """Rotate x [T, H, Dh] by the angles of `rotation` (sign −1: the inverse rotation), in
    fp32, rounded to x's dtype."""
    quarter = x.shape[-1] // 4
    xf = x.float().reshape(x.shape[0], x.shape[1], 2, 2, quarter)         # [T, H, axis, pair, h/2]
    x1, x2 = xf[:, :, :, 0], xf[:, :, :, 1]
    # no out= / in-place: the benchmarks differentiate this code as the torch eager baseline
    y = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=3)
    return y.reshape(x.shape).to(x.dtype)


def rope_axial_fwd(x, pos, theta):
    return rotate(x, *rotation(pos, theta, x.shape[-1], 1.0))


def rope_axial_bwd(dy, pos, theta):
    return rotate(dy, *rotation(pos, theta, dy.shape[-1], -1.0))
