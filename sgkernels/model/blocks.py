"""Transformer blocks with adaLN-Zero over packed token batches (docs/design.md §5).

Per block, with c = SiLU(cond) [S, Dc] and six [S, D] rows per segment from one linear map,
(shift1, scale1, gate1, shift2, scale2, gate2) = Linear(c), each token using its segment's row:

    h = norm(x)·(1 + scale1[seg]) + shift1[seg];   x = x + gate1[seg]·Attn(h)
    h = norm(x)·(1 + scale2[seg]) + shift2[seg];   x = x + gate2[seg]·MLP(h)

The adaLN linear starts at zero (adaLN-Zero), so every block starts as the identity.

    sit    norm = LayerNorm without affine; MLP = fc2(gelu_tanh(fc1 h)), hidden 4·D; biases
    llama  norm = RMSNorm (ops.rms_norm_modulate); MLP = w2(silu(a)·b), [a, b] = w1 h
           (ops.swiglu), hidden ~ 8/3·D; q, k rotated by axial RoPE of pos; no biases

Attention is softmax(q kᵀ/sqrt(Dh)) v within each segment (ops.varlen_attention_qkv on
cu_seqlens, reading q, k, v in place from the qkv projection).
The final layer is norm + modulate (shift, scale from its own zero-initialised adaLN) + linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from sgkernels import ops

from .config import ModelConfig
from .tokens import TokenBatch


def norm_modulate(flavour: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                  seg: torch.Tensor, eps: float) -> torch.Tensor:
    """norm(x)·(1 + scale[seg]) + shift[seg] for the block flavour's norm."""
    if flavour == "llama":
        return ops.rms_norm_modulate(x, None, shift, scale, seg, eps)
    h = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return torch.addcmul(shift.index_select(0, seg), h, 1 + scale.index_select(0, seg))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool, rope_theta: float | None):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, h: torch.Tensor, b: TokenBatch) -> torch.Tensor:
        """proj(attention(q, k, v)) with [q, k, v] = qkv(h): the projection output is viewed as
        [T, 3, H, Dh] and read in place by one packed op (RoPE of q, k inside it), whose gradient
        is one [T, 3, H, Dh] tensor, so neither direction copies q, k or v."""
        t = h.shape[0]
        qkv = self.qkv(h).view(t, 3, self.heads, self.head_dim)
        rope = None if self.rope_theta is None else (b.pos, self.rope_theta)
        o = ops.varlen_attention_qkv(qkv, b.cu_seqlens, b.max_seqlen, rope=rope)
        return self.proj(o.view(t, -1))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class SwiGLUMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(ops.swiglu(self.w1(h)))


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block of width dim, conditioned on cond of width cond_dim."""

    def __init__(self, config: ModelConfig, dim: int, heads: int, cond_dim: int):
        super().__init__()
        self.flavour = config.flavour
        self.eps = config.norm_eps
        llama = config.flavour == "llama"
        self.adaLN = nn.Linear(cond_dim, 6 * dim, bias=config.bias)
        self.attn = Attention(dim, heads, config.bias, config.rope_theta if llama else None)
        hidden = config.mlp_hidden(dim)
        self.mlp = SwiGLUMLP(dim, hidden) if llama else GeluMLP(dim, hidden)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift1, scale1, gate1, shift2, scale2, gate2), each [S, D], from cond [S, Dc], for
        a caller outside forward (the fused route start); under FSDP it is registered as a
        forward method (train/fsdp.py), so it gathers the block's parameters itself."""
        return self._modulation(cond)

    def _modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.adaLN(F.silu(cond)).chunk(6, dim=1)

    def forward(self, b: TokenBatch, mod: tuple[torch.Tensor, ...] | None = None,
                h: torch.Tensor | None = None) -> torch.Tensor:
        """New residual stream [T, D]. mod = modulation(b.cond) and h = the attention input
        norm(b.x)·(1 + scale1[seg]) + shift1[seg] may come precomputed from the caller (the
        fused route start of the Llama flavour, ops.route_gather_rms_norm_modulate)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self._modulation(b.cond) if mod is None \
            else mod
        if h is None:
            h = norm_modulate(self.flavour, b.x, shift1, scale1, b.seg, self.eps)
        x = ops.gated_residual(b.x, self.attn(h, b), gate1, b.seg)
        h = norm_modulate(self.flavour, x, shift2, scale2, b.seg, self.eps)
        return ops.gated_residual(x, self.mlp(h), gate2, b.seg)


def call_block(block: DiTBlock, b: TokenBatch, mod: tuple[torch.Tensor, ...] | None = None,
               h: torch.Tensor | None = None, checkpoint: bool = False) -> torch.Tensor:
    """block(b, mod, h); with `checkpoint` (and autograd recording) the block keeps only its
    inputs and is recomputed in backward (torch.utils.checkpoint, non-reentrant): the same
    gradients for a fraction of the activation memory (sgkernels/train/plan.py)."""
    if checkpoint and torch.is_grad_enabled():
        return _checkpoint(block, b, mod, h, use_reentrant=False)
    return block(b, mod, h)


class FinalLayer(nn.Module):
    """norm + modulate + linear to the patch outputs (p·p·C_out per token)."""

    def __init__(self, config: ModelConfig, dim: int, cond_dim: int, out_dim: int):
        super().__init__()
        self.flavour = config.flavour
        self.eps = config.norm_eps
        self.adaLN = nn.Linear(cond_dim, 2 * dim, bias=config.bias)
        self.linear = nn.Linear(dim, out_dim, bias=config.bias)

    def forward(self, b: TokenBatch) -> torch.Tensor:
        shift, scale = self.adaLN(F.silu(b.cond)).chunk(2, dim=1)
        return self.linear(norm_modulate(self.flavour, b.x, shift, scale, b.seg, self.eps))
