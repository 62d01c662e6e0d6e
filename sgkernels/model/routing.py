"""TREAD token routing on packed batches (docs/design.md §3).

A segment of N tokens routed at rate gamma keeps k = keep(N, gamma) = max(1, N - floor(N*gamma +
1e-9)) tokens: the k tokens of lowest score (ties broken by index), kept in their original order.
With uniform random scores this is a uniform random subset. Selection never waits for the device:
two stable argsorts order the tokens by (segment, score); a token is kept iff its rank within its
segment is below its segment's k (the host counts reach the device by a non-blocking copy,
tokens.to_device); a final stable argsort of the "dropped" flag lists the kept rows in order, and
K = sum(k) is known on the host. `uniform_scores` draws the default random scores on the
generator's device and moves them, so a CPU generator drives a CUDA model.

A route gathers the kept rows of x, pos and seg into a smaller packed batch (new cu_seqlens from
the host keep counts), runs its blocks there, then scatters the rows back into the batch saved
before the route: dropped tokens re-enter with their pre-route activations (TREAD).

Text tokens (T2I, `TokenBatch.text_lengths`) are never routed: a segment of L_s text and N image
tokens keeps L_s + keep(N, gamma) tokens, and the text rows get score -inf, so they are always
among the kept ones whatever scores the caller passes; gamma acts on the image tokens only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sgkernels import ops

from .config import keep_count
from .tokens import TokenBatch, cu_seqlens_from_lengths, to_device


@dataclass
class RoutePlan:
    """Where the kept tokens of one route are: idx [K] int64 rows, keep [T] bool mask."""

    idx: torch.Tensor
    keep: torch.Tensor
    lengths: tuple[int, ...]
    cu_seqlens: torch.Tensor


def uniform_scores(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U[0, 1) route scores of `shape` from `generator` (default RNG of `device` when None),
    drawn on the generator's device and copied to `device` without a host sync."""
    if generator is None:
        return torch.rand(shape, device=device)
    return to_device(torch.rand(shape, generator=generator, device=generator.device), device)


def keep_counts(lengths: Sequence[int], gammas: Sequence[float]) -> tuple[int, ...]:
    """Host keep count of each segment."""
    if len(lengths) != len(gammas):
        raise ValueError(f"need one gamma per segment: {len(gammas)} gammas, "
                         f"{len(lengths)} segments")
    return tuple(keep_count(int(n), float(g)) for n, g in zip(lengths, gammas))


def select_tokens(scores: torch.Tensor, seg: torch.Tensor, cu_seqlens: torch.Tensor,
                  keeps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept rows of a packed batch: in segment s, the keeps[s] tokens of lowest score.

    scores [T] float, seg [T] int32, cu_seqlens [S+1] int32 -> (idx [K] int64 ascending,
    keep [T] bool).
    """
    if scores.ndim != 1 or scores.shape[0] != seg.shape[0]:
        raise ValueError(f"route scores must be [T] = [{seg.shape[0]}], got {tuple(scores.shape)}")
    t = seg.shape[0]
    by_score = torch.argsort(scores, stable=True)
    order = by_score[torch.argsort(seg[by_score], stable=True)]       # by (segment, score, index)
    seg_sorted = seg[order].long()
    rank = torch.arange(t, device=seg.device) - cu_seqlens.long()[seg_sorted]
    k = to_device(list(keeps), seg.device, torch.int64)
    keep = torch.empty(t, dtype=torch.bool, device=seg.device)
    keep[order] = rank < k[seg_sorted]
    idx = torch.argsort(keep.logical_not().to(torch.int8), stable=True)[: sum(keeps)]
    return idx, keep


def plan_route(batch: TokenBatch, gammas: Sequence[float], scores: torch.Tensor) -> RoutePlan:
    """Select the tokens batch keeps when segment s is routed at gammas[s]."""
    lengths = batch.segment_lengths()
    text = batch.text_lengths or (0,) * len(lengths)
    image = keep_counts([n - m for n, m in zip(lengths, text)], gammas)
    keeps = tuple(m + k for m, k in zip(text, image))
    if batch.text_lengths:
        scores = scores.masked_fill(batch.text_mask(), float("-inf"))
    idx, keep = select_tokens(scores, batch.seg, batch.cu_seqlens, keeps)
    return RoutePlan(idx, keep, keeps, cu_seqlens_from_lengths(keeps, batch.x.device))


def _kept(batch: TokenBatch, plan: RoutePlan, x: torch.Tensor, seg: torch.Tensor) -> TokenBatch:
    return batch.replace(x=x, pos=batch.pos[plan.idx], seg=seg, cu_seqlens=plan.cu_seqlens,
                         max_seqlen=max(plan.lengths), lengths=plan.lengths)


def gather(batch: TokenBatch, plan: RoutePlan) -> TokenBatch:
    """The smaller packed batch of the kept tokens (x, pos, seg gathered; cond unchanged)."""
    return _kept(batch, plan, ops.route_gather(batch.x, plan.idx), batch.seg[plan.idx])


def gather_rms_norm_modulate(batch: TokenBatch, plan: RoutePlan, shift: torch.Tensor,
                             scale: torch.Tensor, eps: float) -> tuple[TokenBatch, torch.Tensor]:
    """gather(batch, plan) and y = rms_norm(x_kept)·(1 + scale[seg]) + shift[seg] of its rows,
    in one pass (ops.route_gather_rms_norm_modulate): the Llama route start."""
    seg = batch.seg[plan.idx]
    h, y = ops.route_gather_rms_norm_modulate(batch.x, plan.idx, None, shift, scale, seg, eps)
    return _kept(batch, plan, h, seg), y


def scatter(saved: torch.Tensor, routed: torch.Tensor, plan: RoutePlan) -> torch.Tensor:
    """Write the processed kept rows back into the activations saved before the route."""
    return ops.route_scatter(saved, routed, plan.idx)
