"""Input embedders of the routed DiT.

    timestep   e(t) = [cos(s·t·f_j), sin(s·t·f_j)],  f_j = 10000^(-j/(F/2)), j < F/2,
               s = config.time_scale (t in [0, 1] is spread over [0, s]); then Linear-SiLU-Linear
    label      table of num_classes + 1 rows; row num_classes is the null class (CFG dropout)
    patch      Conv2d(C, D, kernel p, stride p) = one linear map of each p x p patch
    sincos 2-D fixed positions (SiT flavour): half of the channels encode the column, half the
               row, each as [sin(pos·w_k), cos(pos·w_k)], w_k = 10000^(-k/(D/4)), k < D/4
"""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (fp32) of the scalar times t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1000.0,
                 bias: bool = True):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim, bias=bias), nn.SiLU(),
                                 nn.Linear(dim, dim, bias=bias))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t.float() * self.time_scale, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels 0..num_classes-1 plus the null class num_classes."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, N, D] tokens in row-major patch order."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_2d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding [T, dim] (fp32) of positions pos [T, 2] = (row, col)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64,
                                           device=pos.device) / quarter)
    out = []
    for axis in (1, 0):                                    # column half first, then row half
        args = pos[:, axis].double()[:, None] * omega[None]
        out += [torch.sin(args), torch.cos(args)]
    return torch.cat(out, dim=1).float()
