"""Plain-torch oracles shared by the op tests (tests/ops) and the kernel tests (tests/kernels);
importable from any test module because tests/conftest.py puts this folder on sys.path."""
import torch


def torch_rope_axial(x, pos, theta=10000.0):
    """Llama-style rotate_half RoPE applied separately to the row and column halves."""
    dim = x.shape[-1]
    half = dim // 2
    work = torch.promote_types(x.dtype, torch.float32)
    freqs = theta ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)
    outs = []
    for axis in range(2):
        angles = pos[:, axis].to(work)[:, None] * freqs.to(work)
        cos = torch.cat([angles.cos()] * 2, -1)[:, None].to(x.dtype)
        sin = torch.cat([angles.sin()] * 2, -1)[:, None].to(x.dtype)
        part = x[..., axis * half:(axis + 1) * half]
        x1, x2 = part.chunk(2, -1)
        outs.append(part * cos + torch.cat([-x2, x1], -1) * sin)
    return torch.cat(outs, -1)
