"""Text conditioning of the routed DiT (T2I, the TR-DiT flavour; docs/design.md §5).

Inputs are the token features of a frozen text encoder (sgkernels.text), one caption per image,
packed like image tokens: `TextBatch(x [L, E], lengths)` holds the L = Σ_s L_s feature rows of S
captions back to back (no padding). The model maps them with

    u   = Linear_{E -> D}(norm(x))                       per token (norm without affine)
    u   = refiner(u)                                     text_layers pre-norm transformer layers,
                                                         attention within each caption (varlen)
    p_s = Linear_{D -> D}(mean_{j in caption s} u_j)     pooled text vector, added to the adaLN
                                                         cond of segment s: cond = t_emb(t) + p_s
                                                         (mean in float32, deterministic)

and joins them with the image tokens: segment s of the packed TokenBatch is [u of caption s;
N image tokens of image s], one cu_seqlens segment, so image and text tokens attend to each
other in every block and captions of any length need no padding mask. `TokenBatch.text_lengths`
records L_s: routing keeps every text token (they are never dropped) and the final layer reads
only the image tokens.

Positions. Image token (r, c) of the g x g grid has pos (r, c) with r, c >= 0. Text token j of a
caption of L_s tokens gets pos (j - L_s, j - L_s): the diagonal just before the grid origin, so
no text position coincides with an image position and the caption keeps its order under axial
RoPE (llama flavour). The sit flavour adds sin-cos positions to image tokens only; text tokens
keep the encoder's own positional information.

The null condition of CFG is the encoding of the empty caption (only the system prompt), a
TextBatch like any other; the model has no special case for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sgkernels import ops

from .blocks import Attention, GeluMLP, SwiGLUMLP
from .config import ModelConfig
from .tokens import TokenBatch, cu_seqlens_from_lengths, seg_from_lengths, to_device


@dataclass
class TextBatch:
    """Token features of S captions packed along one axis: x [L, E], lengths (host) L_s >= 1."""

    x: torch.Tensor
    lengths: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or not self.x.is_floating_point():
            raise TypeError(f"TextBatch.x must be a floating-point tensor [L, E], got "
                            f"{getattr(self.x, 'dtype', type(self.x).__name__)}")
        if self.x.ndim != 2:
            raise ValueError(f"TextBatch.x must be [L, E], got shape {list(self.x.shape)}")
        self.lengths = tuple(int(n) for n in self.lengths)
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"TextBatch.lengths must list at least one caption, each of >= 1 "
                             f"token, got {self.lengths}")
        if sum(self.lengths) != self.x.shape[0]:
            raise ValueError(f"TextBatch.lengths sum to {sum(self.lengths)} but x has "
                             f"{self.x.shape[0]} rows")

    @classmethod
    def from_list(cls, features: Sequence[torch.Tensor]) -> TextBatch:
        """Pack per-caption features [L_s, E] into one batch."""
        if not features:
            raise ValueError("TextBatch.from_list needs at least one caption")
        return cls(torch.cat(list(features)), tuple(f.shape[0] for f in features))

    @staticmethod
    def cat(batches: Sequence[TextBatch]) -> TextBatch:
        """Captions of several batches, in order."""
        return TextBatch(torch.cat([b.x for b in batches]),
                         sum((b.lengths for b in batches), ()))

    @property
    def num_segments(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def split(self) -> list[torch.Tensor]:
        """Per-caption feature tensors [L_s, E]."""
        return list(self.x.split(list(self.lengths)))

    def select(self, indices: Sequence[int]) -> TextBatch:
        """The captions at `indices` (host ints, repeats allowed), in that order."""
        parts = self.split()
        return TextBatch.from_list([parts[int(i)] for i in indices])

    def repeat(self, n: int) -> TextBatch:
        """All captions n times over: [c_0 … c_{S-1}, c_0 … c_{S-1}, …]."""
        return TextBatch(self.x.repeat(n, 1), self.lengths * n)

    def expand(self, n: int) -> TextBatch:
        """One caption (S = 1) used for n segments, e.g. the null caption for a batch."""
        if self.num_segments != 1:
            raise ValueError(f"TextBatch.expand needs one caption, got {self.num_segments}")
        return self.repeat(n)

    def to(self, *args, **kwargs) -> TextBatch:
        return TextBatch(self.x.to(*args, **kwargs), self.lengths)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight.to(x.dtype), self.eps)


class RefinerLayer(nn.Module):
    """Pre-norm transformer layer on text tokens: x + Attn(norm x), then x + MLP(norm x)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, llama = config.dim, config.flavour == "llama"
        norm = (lambda: RMSNorm(d, config.norm_eps)) if llama else \
            (lambda: nn.LayerNorm(d, eps=config.norm_eps))
        self.norm1, self.norm2 = norm(), norm()
        self.attn = Attention(d, config.heads, config.bias, None)
        hidden = config.mlp_hidden(d)
        self.mlp = SwiGLUMLP(d, hidden) if llama else GeluMLP(d, hidden)

    def forward(self, b: TokenBatch) -> torch.Tensor:
        x = b.x + self.attn(self.norm1(b.x), b)
        return x + self.mlp(self.norm2(x))


class TextConditioner(nn.Module):
    """Encoder features -> refined text tokens [L, D] and pooled vectors [S, D]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.text_dim, self.eps = config.text_dim, config.norm_eps
        self.proj = nn.Linear(config.text_dim, config.dim, bias=config.bias)
        self.refiner = nn.ModuleList(RefinerLayer(config) for _ in range(config.text_layers))
        self.pool = nn.Linear(config.dim, config.dim, bias=config.bias)

    def forward(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.proj.weight.dtype
        u = self.proj(F.layer_norm(text.x.to(dtype), (self.text_dim,), eps=self.eps))
        device, lengths = u.device, text.lengths
        seg, cu = seg_from_lengths(lengths, device), cu_seqlens_from_lengths(lengths, device)
        if self.refiner:
            b = TokenBatch(x=u, pos=torch.zeros((u.shape[0], 2), dtype=torch.int32, device=device),
                           seg=seg, cu_seqlens=cu, max_seqlen=max(lengths),
                           cond=u.new_zeros((len(lengths), 0)), lengths=lengths)
            for layer in self.refiner:
                u = layer(b.replace(x=u))
        return u, self.pool(segment_mean(u, seg, cu, lengths))


def segment_mean(u: torch.Tensor, seg: torch.Tensor, cu_seqlens: torch.Tensor,
                 lengths: tuple[int, ...]) -> torch.Tensor:
    """[S, D] mean of the rows of each segment of u [L, D], in u's dtype.

    Deterministic and accumulated in float32 whatever u's dtype (bf16 under autocast): row j of
    segment s is written (one writer per slot, no atomics) to slot (s, j) of a zero-padded
    [S, max L_s, D] float32 buffer, which is summed along j and divided by L_s.
    """
    seg = seg.long()
    j = torch.arange(u.shape[0], device=u.device) - cu_seqlens.long()[seg]
    padded = u.new_zeros((len(lengths), max(lengths), u.shape[1]), dtype=torch.float32)
    padded = padded.index_put((seg, j), u.float())
    counts = to_device(lengths, u.device, torch.float32)
    return (padded.sum(1) / counts[:, None]).to(u.dtype)


def join(text: torch.Tensor, text_lengths: tuple[int, ...], image: torch.Tensor,
         image_pos: torch.Tensor, cond: torch.Tensor) -> TokenBatch:
    """Segments [text_s; image_s] from text [L, D] and image tokens [B, N, D] (pos [N, 2])."""
    b, n, d = image.shape
    if len(text_lengths) != b:
        raise ValueError(f"need one caption per image: {len(text_lengths)} captions, {b} images")
    device = image.device
    lengths = tuple(m + n for m in text_lengths)
    cu = cu_seqlens_from_lengths(lengths, device).long()
    tlen = to_device(text_lengths, device, torch.int64)
    tcu = cu_seqlens_from_lengths(text_lengths, device).long()
    tseg = seg_from_lengths(text_lengths, device).long()
    j = torch.arange(text.shape[0], device=device) - tcu[tseg]          # index within caption
    text_dest = cu[tseg] + j
    iseg = torch.arange(b, device=device).repeat_interleave(n)
    image_dest = cu[iseg] + tlen[iseg] + torch.arange(n, device=device).repeat(b)
    total = sum(lengths)
    x = image.new_zeros((total, d)).index_copy(0, text_dest, text.to(image.dtype)) \
        .index_copy(0, image_dest, image.reshape(b * n, d))
    tpos = (j - tlen[tseg]).to(torch.int32)[:, None].expand(-1, 2)
    pos = torch.empty((total, 2), dtype=torch.int32, device=device)
    pos[text_dest] = tpos
    pos[image_dest] = image_pos.to(torch.int32).repeat(b, 1)
    return TokenBatch(x=x, pos=pos, seg=seg_from_lengths(lengths, device),
                      cu_seqlens=cu.int(), max_seqlen=max(lengths), cond=cond,
                      lengths=lengths, text_lengths=tuple(text_lengths))
