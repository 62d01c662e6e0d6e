"""rope_axial for the torch backend; math: sgkernels.ops.rope. Angles are computed in fp32 from
the frequency table every backend shares (kernels/rope_frequencies.py)."""
import torch

from ..rope_frequencies import rope_frequencies


def rotate(x, pos, theta, sign):
    """Rotate x [T, H, Dh] by sign·angle (sign −1: the inverse rotation), in fp32, rounded to
    x's dtype."""
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
    return rotate(x, pos, theta, 1.0)


def rope_axial_bwd(dy, pos, theta):
    return rotate(dy, pos, theta, -1.0)
