"""Frequencies of the axial RoPE, shared by every backend of rope_axial (torch/rope.py and
triton/rope.py), so all of them rotate by the same fp32 values."""
import functools

import torch


@functools.lru_cache(maxsize=64)
def rope_frequencies(theta, head_dim, device):
    """f_j = theta^(-2j/h) for j in [0, h/2), h = Dh/2: [Dh/4] fp32, rounded from fp64 on the
    host (every backend rotates by these exact values); built once per (theta, Dh, device), so
    a call copies nothing to the device (nothing to capture in a CUDA graph either). The
    returned tensor is shared: do not modify it."""
    j = torch.arange(head_dim // 4, dtype=torch.float64)
    return (float(theta) ** (-2.0 * j / (head_dim // 2))).to(device=device, dtype=torch.float32)
