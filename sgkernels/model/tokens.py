"""Packed token batches (docs/design.md §3).

A `TokenBatch` holds the tokens of S segments concatenated along one axis:

    x          [T, D]    tokens, segment after segment
    pos        [T, 2]    int32 axial (row, col) grid position of each token
    seg        [T]       int32 segment id of each token (non-decreasing)
    cu_seqlens [S+1]     int32 offsets, cu_seqlens[s] = sum of the lengths of segments < s
    max_seqlen int       longest segment
    cond       [S, Dc]   per-segment conditioning vector (feeds adaLN)
    lengths    tuple     host copy of the segment lengths (avoids a device sync when routing)
    text_lengths tuple   T2I only: the first text_lengths[s] tokens of segment s are text tokens
                         (never routed, not decoded), the rest its image tokens; None: no text

Patches: an image [C, H, W] with patch size p becomes N = (H/p)(W/p) tokens in row-major order;
patchify lays a patch out as (p_row, p_col, C), the layout of the final linear layer's output.

Small index tensors built from host lengths (cu_seqlens, per-segment counts) go to the device
with `to_device`: pinned staging and a non_blocking copy on CUDA, so building a batch or a route
plan never blocks the host on the GPU (a pageable torch.tensor(list, device=cuda) would). While
a CUDA graph is being captured the copy becomes a node of the graph that reads the host buffer
at every replay: such buffers are collected by `graph_host_buffers()`, whose caller keeps them
as long as the graph.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_graph_buffers: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "sgkernels_graph_host_buffers", default=None)


@dataclass
class TokenBatch:
    x: torch.Tensor
    pos: torch.Tensor
    seg: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    cond: torch.Tensor
    lengths: tuple[int, ...] | None = None
    text_lengths: tuple[int, ...] | None = None

    @property
    def num_segments(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    def segment_lengths(self) -> tuple[int, ...]:
        """Host segment lengths: `lengths` when known, else read from cu_seqlens (a sync)."""
        if self.lengths is not None:
            return self.lengths
        return tuple(torch.diff(self.cu_seqlens).tolist())

    def text_mask(self) -> torch.Tensor:
        """[T] bool, True at text tokens (all False without text); no host sync."""
        t = self.x.shape[0]
        if not self.text_lengths:
            return torch.zeros(t, dtype=torch.bool, device=self.x.device)
        tlen = to_device(self.text_lengths, self.x.device, torch.int64)
        seg = self.seg.long()
        return torch.arange(t, device=self.x.device) - self.cu_seqlens.long()[seg] < tlen[seg]

    def image_rows(self) -> torch.Tensor:
        """int64 rows of the image tokens, in order (all rows without text); no host sync."""
        t = self.x.shape[0]
        if not self.text_lengths:
            return torch.arange(t, device=self.x.device)
        order = torch.argsort(self.text_mask().to(torch.int8), stable=True)   # image rows first
        return order[: t - sum(self.text_lengths)]

    def replace(self, **changes) -> TokenBatch:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def cat(batches: list[TokenBatch]) -> TokenBatch:
        """Pack several batches into one (segments in order; segment ids renumbered)."""
        if not batches:
            raise ValueError("TokenBatch.cat needs at least one batch")
        lengths = []
        for b in batches:
            lengths.extend(b.segment_lengths())
        segs, offset = [], 0
        for b in batches:
            segs.append(b.seg + offset)
            offset += b.num_segments
        device = batches[0].x.device
        text = None
        if any(b.text_lengths for b in batches):
            text = sum((b.text_lengths or (0,) * b.num_segments for b in batches), ())
        return TokenBatch(
            x=torch.cat([b.x for b in batches]),
            pos=torch.cat([b.pos for b in batches]),
            seg=torch.cat(segs),
            cu_seqlens=cu_seqlens_from_lengths(lengths, device),
            max_seqlen=max(lengths),
            cond=torch.cat([b.cond for b in batches]),
            lengths=tuple(lengths),
            text_lengths=text,
        )


def to_device(data, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host list / tuple / tensor as a tensor on `device` without a host sync.

    CUDA targets get a pinned copy of the host data (PyTorch's caching host allocator) and a
    non_blocking, stream-ordered copy; other targets (cpu, meta) a plain, blocking one, so a
    device -> cpu copy is complete when it returns.
    """
    if isinstance(data, torch.Tensor):
        host = data if dtype is None else data.to(dtype)
    else:
        host = torch.tensor(data, dtype=dtype, device="cpu")
    device = torch.device(device)
    if device.type == "cuda" and host.device.type == "cpu":
        if torch.cuda.is_current_stream_capturing():
            return _captured_copy(host, device)
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device, non_blocking=device.type == "cuda")


@contextlib.contextmanager
def graph_host_buffers() -> Iterator[list[torch.Tensor]]:
    """Collect, inside the block, the host buffers that copies captured into a CUDA graph read
    at every replay; the caller keeps the yielded list alive as long as the graph."""
    buffers: list[torch.Tensor] = []
    token = _graph_buffers.set(buffers)
    try:
        yield buffers
    finally:
        _graph_buffers.reset(token)


def _captured_copy(host: torch.Tensor, device) -> torch.Tensor:
    """A host -> device copy captured into a CUDA graph: from a private host buffer that no
    one writes again, kept by graph_host_buffers (no pinned staging: pinned blocks are
    recycled by their allocator, which would change what a replay reads)."""
    buffers = _graph_buffers.get()
    if buffers is None:
        raise RuntimeError("to_device: a host -> device copy inside CUDA graph capture needs "
                           "sgkernels.model.tokens.graph_host_buffers() around the capture")
    host = host.clone()
    buffers.append(host)
    return host.to(device, non_blocking=True)


def cu_seqlens_from_lengths(lengths, device) -> torch.Tensor:
    """int32 [S+1] offsets from host lengths (no host sync)."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + int(n))
    return to_device(offsets, device, torch.int32)


def seg_from_lengths(lengths, device) -> torch.Tensor:
    """int32 [T] segment id of each token from host lengths (no host sync)."""
    counts = to_device(list(lengths), device, torch.int64)
    ids = torch.arange(len(lengths), dtype=torch.int32, device=device)
    return torch.repeat_interleave(ids, counts, output_size=int(sum(lengths)))


def grid_pos(h: int, w: int, device) -> torch.Tensor:
    """int32 [h*w, 2] (row, col) of each token of an h x w grid, row-major."""
    rows = torch.arange(h, dtype=torch.int32, device=device).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.int32, device=device).repeat(h)
    return torch.stack((rows, cols), dim=1)


def dense_batch(x: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor) -> TokenBatch:
    """TokenBatch of B equal-length segments from x [B, N, D], pos [N, 2], cond [B, Dc]."""
    b, n, d = x.shape
    lengths = (n,) * b
    return TokenBatch(
        x=x.reshape(b * n, d),
        pos=pos.repeat(b, 1),
        seg=seg_from_lengths(lengths, x.device),
        cu_seqlens=cu_seqlens_from_lengths(lengths, x.device),
        max_seqlen=n,
        cond=cond,
        lengths=lengths,
    )


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], patch layout (p_row, p_col, C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """[B, (h/p)(w/p), p*p*C] -> [B, C, h, w]; inverse of `patchify`."""
    b, n, k = tokens.shape
    c = k // (p * p)
    x = tokens.reshape(b, h // p, w // p, p, p, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h, w)
