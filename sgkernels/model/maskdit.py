"""MaskDiT decoder (Zheng et al. 2023, as used in docs/design.md §5).

In MaskDiT mode the encoder blocks see only the visible tokens: each segment of N tokens keeps
keep(N, gamma) of them (gamma = mask rate, selected like a route). The decoder D^dec then works on
every position:

    u = Linear_{D -> D_dec}(encoder output)             visible tokens
    z = mask token e_mask [D_dec] at every position; z[visible] = u
    z = z + sincos_2d(pos, D_dec)                        (sit flavour; llama uses axial RoPE)
    z = decoder blocks(z)                                decoder_depth adaLN-Zero blocks of width
                                                         D_dec, conditioned on the same cond
"""
from __future__ import annotations

import torch
from torch import nn

from sgkernels import ops

from .blocks import DiTBlock, call_block
from .config import ModelConfig
from .embedders import sincos_2d
from .routing import RoutePlan
from .tokens import TokenBatch


class MaskDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.flavour = config.flavour
        self.dim = config.decoder_dim
        self.embed = nn.Linear(config.dim, config.decoder_dim, bias=config.bias)
        self.mask_token = nn.Parameter(torch.zeros(config.decoder_dim))
        self.blocks = nn.ModuleList(
            DiTBlock(config, config.decoder_dim, config.decoder_heads, config.dim)
            for _ in range(config.decoder_depth))

    def fill(self, full: TokenBatch, visible: torch.Tensor, plan: RoutePlan | None) -> TokenBatch:
        """Decoder input: embedded visible tokens at their rows, the mask token elsewhere."""
        u = self.embed(visible)
        if plan is None:
            z = u
        else:
            base = self.mask_token.to(u.dtype).expand(full.x.shape[0], self.dim)
            z = ops.route_scatter(base, u, plan.idx)
        if self.flavour == "sit":
            z = z + sincos_2d(full.pos, self.dim).to(z.dtype)
        return full.replace(x=z)

    def forward(self, b: TokenBatch, checkpoint: bool = False) -> TokenBatch:
        for block in self.blocks:
            b = b.replace(x=call_block(block, b, checkpoint=checkpoint))
        return b
