"""Memory planner: the bytes per GPU of a training run, derived from the model config.

With P parameters (P_w of them weights of linear / conv layers), world size N, global batch B
(b = B / N samples per GPU) and S the sharded size ⌈·/N⌉ of each parameter (FSDP pads dim 0):

    ddp                                        fsdp (fully_shard per block and at the root)
    parameters    4P (fp32 master)             4 S(P)
    unsharded     -                            c·(P_root + 2 P_block): the root's parameters
                                               stay gathered, one block computes while the
                                               next is prefetched (c = 2 for bf16, 4 for fp32)
    gradients     4P (the DDP all-reduce       4 S(P), + (c + 4) P_block while a block's
                  buckets are their storage)   gradient is reduce-scattered in fp32
    AdamW         8P (exp_avg, exp_avg_sq)     8 S(P)
    EMA           4P                           4 S(P) (sharded like the weights)
    weight casts  2 P_w under bf16 autocast    - (FSDP computes in its own bf16 copies)
    activations   Σ_k b · T_k · s(D_k, Hm_k, H_k)  + per-batch extras (`activation_bytes`)

T_k is the tokens per sample of block k in training (keep(N, γ) inside a TREAD route at its
rate, N elsewhere; MaskDiT: keep(N, mask_ratio) in the encoder, N in the decoder; T2I: plus the
caption's text_len tokens, never routed). s is what autograd keeps per token and block, read off
the ops' saved tensors (a: activation element size, 4 fp32 / 2 bf16):

    llama  a (10 D + 3 Hm) + 4 (H + 2)   x, h, q, k, v, o, y_attn, x', h', y_mlp, w1 out (2 Hm),
                                         SwiGLU out (Hm); fp32 rstd ×2 and lse per head
    sit    fp32: 4 (14 D + 2 Hm + H + 4)   per norm x, LayerNorm out, scale[seg], h (+ mean, rstd)
           bf16: CUDA autocast runs LayerNorm in fp32: 36 D + 4 Hm + 4 H + 16

Activation checkpointing "blocks" keeps only each block's inputs (x, and h at a Llama route
start) and recomputes one block at a time in backward: Σ_k inputs + max_k s_k. Ops outside the
blocks (embedding, final layer, the loss) are counted the same way in `activation_bytes`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sgkernels.model.config import ModelConfig, keep_count
from sgkernels.model.dit import CHECKPOINTING

PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
GIB = 2 ** 30


@dataclass(frozen=True)
class Row:
    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class Plan:
    """Rows of one configuration; `fits` is None without a GPU memory size."""

    parallel: str
    gpus: int
    batch: int
    checkpointing: str
    precision: str
    rows: tuple[Row, ...]
    gpu_bytes: int | None

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_bytes is None else self.total <= self.gpu_bytes


@dataclass(frozen=True)
class ParamCounts:
    total: int          # P
    weights: int        # P_w: weights of Linear / Conv layers (what autocast casts)
    block: int          # P_block: the largest transformer block
    root: int           # P_root: parameters outside the blocks (embedders, final layer, ...)
    sharded: int        # Σ ⌈numel / N⌉ padded on dim 0, for the world size of `count_params`


def count_params(config: ModelConfig, world: int = 1) -> ParamCounts:
    """Parameter counts of `config`'s RoutedDiT, built on the meta device (no memory)."""
    from sgkernels.model import RoutedDiT

    with torch.device("meta"):
        model = RoutedDiT(config)
    blocks = [*model.blocks, *(model.decoder.blocks if model.decoder is not None else ())]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    params = list(model.parameters())
    weights = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    sharded = sum(math.ceil(p.shape[0] / world) * (p.numel() // max(p.shape[0], 1))
                  if p.dim() else math.ceil(1 / world) for p in params)
    return ParamCounts(total=sum(p.numel() for p in params), weights=weights,
                       block=max((sum(p.numel() for p in b.parameters()) for b in blocks),
                                 default=0),
                       root=sum(p.numel() for p in params if id(p) not in in_blocks),
                       sharded=sharded)


def _token_bytes(flavour: str, dim: int, hidden: int, heads: int, precision: str,
                 device: str) -> int:
    """s: bytes autograd keeps per token of one block (module docstring)."""
    a = 4 if precision == "fp32" else 2
    if flavour == "llama":
        return a * (10 * dim + 3 * hidden) + 4 * (heads + 2)
    if precision == "fp32":
        return 4 * (14 * dim + 2 * hidden + heads + 4)
    if device == "cuda":
        return 36 * dim + 4 * hidden + 4 * heads + 16
    return 2 * (14 * dim + 2 * hidden) + 4 * heads + 8        # CPU autocast: LayerNorm in bf16


def _norm_bytes(flavour: str, dim: int, precision: str, device: str) -> int:
    """Bytes per token of one norm-modulate feeding a linear (the final layer; a block input)."""
    a = 4 if precision == "fp32" else 2
    if flavour == "llama":
        return 2 * a * dim + 4
    if precision == "bf16" and device == "cuda":
        return 12 * dim + 8
    return a * (4 * dim + 2)


@dataclass(frozen=True)
class Stage:
    """Blocks of one width that run on `tokens` tokens per sample."""

    count: int
    tokens: int
    dim: int
    heads: int
    route_start: bool = False     # first block of a Llama route: its input h comes gathered


def stages(config: ModelConfig) -> list[Stage]:
    """The transformer blocks of a training forward as stages (routes at their own rates)."""
    c, n, text = config, config.num_tokens, config.text_len if config.text_conditioned else 0
    if c.maskdit:
        out = [Stage(c.depth, keep_count(n, c.mask_ratio) if c.mask_ratio > 0 else n, c.dim,
                     c.heads)]
        return out + [Stage(c.decoder_depth, n, c.decoder_dim, c.decoder_heads)]
    out, k = [], 0
    for r in c.routes:
        if r.start > k:
            out.append(Stage(r.start - k, n + text, c.dim, c.heads))
        kept = keep_count(n, r.gamma) + text if r.gamma > 0 else n + text
        llama_start = c.flavour == "llama" and r.gamma > 0
        out.append(Stage(1, kept, c.dim, c.heads, route_start=llama_start))
        if r.end > r.start:
            out.append(Stage(r.end - r.start, kept, c.dim, c.heads))
        k = r.end + 1
    if k < c.depth:
        out.append(Stage(c.depth - k, n + text, c.dim, c.heads))
    return out


def activation_bytes(config: ModelConfig, batch: int, precision: str = "fp32",
                     checkpointing: str = "none", device: str = "cuda") -> int:
    """Bytes autograd keeps at the end of a training forward of `batch` samples (plus, with
    checkpointing, the one block recomputed at a time in backward)."""
    c, a = config, 4 if precision == "fp32" else 2
    hidden = c.mlp_hidden
    per_block = [(s, _token_bytes(c.flavour, s.dim, hidden(s.dim), s.heads, precision, device))
                 for s in stages(c)]
    if checkpointing == "blocks":
        inputs = sum(s.count * s.tokens * a * s.dim * (1 + s.route_start) for s, _ in per_block)
        blocks = inputs + max(s.tokens * b for s, b in per_block)
    else:
        blocks = sum(s.count * s.tokens * b for s, b in per_block)
    # per token batch: seg (int32), pos (int32 ×2, llama), a route's gather index (int64)
    batches = {s.tokens for s, _ in per_block}
    index = sum(t * (4 + (8 if c.flavour == "llama" else 0)) for t in batches)
    index += sum(keep_count(c.num_tokens, r.gamma) * 8 for r in c.routes if r.gamma > 0)
    text = 0
    if c.text_conditioned:      # refiner layers: a block without adaLN, no RoPE positions
        refine = _token_bytes(c.flavour, c.dim, hidden(c.dim), c.heads, precision, device)
        text = c.text_len * (c.text_layers * (refine - 2 * a * c.dim) + a * (c.text_dim + c.dim))
    final = c.num_tokens * _norm_bytes(c.flavour, c.decoder_dim if c.maskdit else c.dim,
                                       precision, device)
    image = 3 * a * c.in_channels * c.input_size ** 2       # patch input, output, loss
    return batch * (blocks + index + text + final + image)


def plan(config: ModelConfig, gpus: int, batch: int, parallel: str = "ddp",
         checkpointing: str = "none", precision: str = "bf16", gpu_gib: float | None = None,
         device: str = "cuda") -> Plan:
    """Per-GPU bytes of training `config` on `gpus` GPUs at global batch `batch`."""
    for name, value, valid in (("parallel", parallel, PARALLEL),
                               ("activation_checkpointing", checkpointing, CHECKPOINTING),
                               ("precision", precision, PRECISIONS)):
        if value not in valid:
            raise ValueError(f"{name}: expected one of {valid}, got {value!r}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus: expected an int >= 1, got {gpus!r}")
    if not isinstance(batch, int) or batch < gpus or batch % gpus:
        raise ValueError(f"batch: expected a multiple of gpus ({gpus}), got {batch!r}")
    if gpu_gib is not None and not gpu_gib > 0:
        raise ValueError(f"gpu_mem: expected GiB > 0, got {gpu_gib!r}")
    p = count_params(config, gpus)
    c = 2 if precision == "bf16" else 4
    act = activation_bytes(config, batch // gpus, precision, checkpointing, device)
    act_how = (f"{batch // gpus} samples/GPU, {precision}, checkpointing {checkpointing}")
    if parallel == "ddp":
        rows = [Row("parameters", 4 * p.total, "fp32 master, 4P"),
                Row("gradients", 4 * p.total, "fp32, 4P (also the DDP buckets)"),
                Row("AdamW states", 8 * p.total, "exp_avg + exp_avg_sq, 8P"),
                Row("EMA", 4 * p.total, "fp32 copy, 4P")]
        if precision == "bf16":
            rows.append(Row("weight casts", 2 * p.weights, "bf16 autocast copies, 2P_w"))
    else:
        shard = p.sharded
        rows = [Row("parameters", 4 * shard, f"fp32 shard, 4P/{gpus}"),
                Row("unsharded params", c * (p.root + 2 * p.block),
                    "root + 2 blocks gathered in compute dtype"),
                Row("gradients", 4 * shard + (c + 4) * p.block,
                    f"fp32 shard 4P/{gpus} + one block unsharded"),
                Row("AdamW states", 8 * shard, f"8P/{gpus}"),
                Row("EMA", 4 * shard, f"fp32 shard, 4P/{gpus}")]
    rows.append(Row("activations", act, act_how))
    gpu_bytes = None if gpu_gib is None else int(gpu_gib * GIB)
    return Plan(parallel, gpus, batch, checkpointing, precision, tuple(rows), gpu_bytes)


def format_plan(config_name: str, result: Plan) -> str:
    """The plan as a table (GiB per GPU)."""
    head = (f"{config_name}: {result.parallel} on {result.gpus} GPU(s), global batch "
            f"{result.batch}, {result.precision}, activation checkpointing "
            f"{result.checkpointing}")
    lines = [head, f"  {'component':18s} {'GiB/GPU':>9s}  derivation"]
    lines += [f"  {r.name:18s} {r.bytes / GIB:9.2f}  {r.how}" for r in result.rows]
    lines.append(f"  {'total':18s} {result.total / GIB:9.2f}")
    if result.gpu_bytes is not None:
        verdict = "fits" if result.fits else "does NOT fit"
        lines.append(f"  {verdict} in {result.gpu_bytes / GIB:.0f} GiB "
                     f"({result.total / result.gpu_bytes:.0%} used)")
    return "\n".join(lines)
