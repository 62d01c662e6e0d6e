"""RoutedDiT: a DiT/SiT or Llama-style diffusion transformer with TREAD routes or MaskDiT masking.

Pipeline: patch embed (+ fixed sin-cos positions for sit) -> packed TokenBatch of B segments with
cond = t_emb(t) + y_emb(y) -> blocks, where the blocks of route r run on the tokens kept at that
route's rate (routing.py) -> (MaskDiT: decoder over every position) -> final layer -> unpatchify.
In the Llama flavour a route starts with one fused op, the gather of the kept rows and the first
routed block's RMSNorm-modulate (ops.route_gather_rms_norm_modulate).
With learn_sigma the final layer predicts 2C channels and the velocity is the first C.

Text-conditioned models (config.text_conditioned, T2I) join refined caption tokens with each
image's tokens in its segment (model/text.py); they are never routed, and the pooled caption
vector is added to cond. The call contract (rates, route scores, keep masks, errors) is in the
docstrings of `RoutedDiT` and `RoutedDiT.forward`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sgkernels import ops

from . import routing
from .blocks import DiTBlock, FinalLayer, call_block
from .config import ModelConfig, check_gamma
from .embedders import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_2d
from .maskdit import MaskDecoder
from .text import TextBatch, TextConditioner, join
from .tokens import TokenBatch, dense_batch, grid_pos, unpatchify

Gamma = None | float | Sequence[float] | torch.Tensor
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CHECKPOINTING = ("none", "blocks")


class RoutedDiT(nn.Module):
    """Diffusion transformer whose blocks run on routed (TREAD) or visible (MaskDiT) tokens.

    Call it as `model(x, t, y, ...)` (see `forward`) to get the velocity of a batch of images;
    `forward_tokens` is the packed entry point over any TokenBatch, `record_token_counts`
    reports how many tokens each block processed. Parameters are created in fp32 with the DiT
    initialization (adaLN-Zero: the output is 0 until the adaLN and final layers learn);
    convert with `.to(dtype)` (fp32, bf16, fp16) before a call.

    Args:
        config: the architecture, a `ModelConfig` (`sgkernels.presets.get(name)` gives the
            presets): image size and channels, classes, depth and widths, flavour "sit" |
            "llama", token routes, MaskDiT decoder, text conditioning.

    Raises:
        TypeError: config is not a ModelConfig.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.in_channels, c.dim, c.patch_size, bias=c.bias)
        self.t_embedder = TimestepEmbedder(c.dim, c.time_freq_dim, c.time_scale, bias=c.bias)
        self.y_embedder = LabelEmbedder(c.num_classes, c.dim) if c.num_classes > 0 else None
        self.text = TextConditioner(c) if c.text_conditioned else None
        self.blocks = nn.ModuleList(DiTBlock(c, c.dim, c.heads, c.dim) for _ in range(c.depth))
        self.decoder = MaskDecoder(c) if c.maskdit else None
        out_width = c.decoder_dim if c.maskdit else c.dim
        self.final = FinalLayer(c, out_width, c.dim, c.patch_size ** 2 * c.out_channels)
        self.checkpoint_blocks = False     # set_activation_checkpointing
        self.compile_options: dict | None = None   # compile_blocks
        self.initialize_weights()

    def set_activation_checkpointing(self, policy: str) -> RoutedDiT:
        """Activation checkpointing of the transformer blocks in training.

        Args:
            policy: "none" (keep every block's activations for backward) or "blocks" (keep
                each block's inputs only and recompute the block in backward; gradients are
                unchanged, activation memory drops to the inputs plus one block, see
                `python -m sgkernels plan`).

        Returns:
            The model itself.

        Raises:
            ValueError: an unknown policy.
        """
        if policy not in CHECKPOINTING:
            raise ValueError(f"activation_checkpointing: expected one of {CHECKPOINTING}, "
                             f"got {policy!r}")
        self.checkpoint_blocks = policy == "blocks"
        return self

    def compile_blocks(self, **options) -> RoutedDiT:
        """torch.compile every transformer block in place (nn.Module.compile), the encoder's
        and the MaskDiT decoder's: the blocks hold nearly all the work of a forward.

        Compiled with dynamic shapes by default: the token count T, the segment count S and
        max_seqlen are symbolic, so one graph per block code path (the plain block; the
        block after a fused Llama route start, which receives its modulation and normalized
        input) serves every batch size and drop rate -- a guided sampling run whose rates
        change every step compiles no more graphs than a dense one. Route planning (host
        keep counts, token selection), the embedders and the final layer stay eager.
        Compile the blocks before FSDP shards them (the trainer's order). Calling it again
        with the same options does nothing.

        Args:
            **options: torch.compile keyword arguments; defaults dynamic=True,
                fullgraph=True (e.g. backend="aot_eager", mode="max-autotune").

        Returns:
            The model itself.
        """
        options = {"dynamic": True, "fullgraph": True, **options}
        if options != self.compile_options:
            for block in self._all_blocks():
                block.compile(**options)
            self.compile_options = options
        return self

    def _all_blocks(self) -> list[DiTBlock]:
        return [*self.blocks, *(self.decoder.blocks if self.decoder is not None else ())]

    @contextlib.contextmanager
    def record_token_counts(self) -> Iterator[list[list[int]]]:
        """Record how many tokens each block processes, call by call.

        A context manager over forward hooks (on the model, its encoder blocks and the MaskDiT
        decoder blocks); the forward itself keeps no record, so it has no Python side effects
        (and compiles to the same graph) outside this block. Inside it, every call
        `model(...)` appends one list to the yielded list: the token count of each block in
        order (encoder blocks, then decoder blocks), summed over the segments of the batch,
        text tokens included. Blocks recomputed in backward (activation checkpointing) are not
        recorded again. The hooks are removed on exit.

            with model.record_token_counts() as counts:
                model(x, t, y, gamma=0.5)
            counts[-1]     # 4 blocks, route over blocks 1..2, B = 4 images of N = 256 tokens:
                           # [4 * 256, 4 * 128, 4 * 128, 4 * 256]

        Returns:
            A context manager yielding the list of per-call lists of token counts.
        """
        counts: list[list[int]] = []
        current: list[list[int]] = []          # the open record, during a call only

        def start(module, args):
            counts.append([])
            current.append(counts[-1])

        def stop(module, args, out):
            current.clear()

        def record(module, args, out):
            if current:
                current[0].append(out.shape[0])

        handles = [self.register_forward_pre_hook(start),
                   self.register_forward_hook(stop, always_call=True),
                   *(block.register_forward_hook(record) for block in self._all_blocks())]
        try:
            yield counts
        finally:
            for handle in handles:
                handle.remove()

    @property
    def num_routes(self) -> int:
        """R: routes of the config, or the one mask of MaskDiT mode."""
        return 1 if self.config.maskdit else len(self.config.routes)

    def initialize_weights(self) -> None:
        """DiT init: xavier linears, zero biases; adaLN and final linear zero (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.t_embedder.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        if self.decoder is not None:
            nn.init.normal_(self.decoder.mask_token, std=0.02)
        for m in [*(b.adaLN for b in self._all_blocks()), self.final.adaLN, self.final.linear]:
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- inputs
    def _check_text(self, text, b: int) -> None:
        if self.text is None:
            if text is not None:
                raise ValueError("text must be None for a model without text conditioning "
                                 "(config.text_conditioned=False)")
            return
        if not isinstance(text, TextBatch):
            raise TypeError(f"text must be a sgkernels.model.TextBatch of {b} captions for a "
                            f"text-conditioned model, got {type(text).__name__}")
        if text.num_segments != b or text.dim != self.config.text_dim:
            raise ValueError(f"text must hold {b} captions of width text_dim "
                             f"{self.config.text_dim}, got {text.num_segments} of width "
                             f"{text.dim}")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters (what x must be, outside autocast)."""
        return self.patch_embed.proj.weight.dtype

    def check_dtype(self) -> None:
        """TypeError unless the parameters are in a dtype the ops support (SUPPORTED_DTYPES)."""
        if self.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
            raise TypeError(f"RoutedDiT runs in {names} (the dtypes of the sgkernels ops); this "
                            f"model's parameters are {str(self.dtype).replace('torch.', '')}: "
                            f"convert it, e.g. model.float()")

    def _check_inputs(self, x, t, y, text=None) -> None:
        """Host-side metadata always; values of t and y on CPU, on CUDA under SGKERNELS_DEBUG=1
        (docs/contracts.md, input policy)."""
        c = self.config
        compiling = torch.compiler.is_compiling()
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        expected = (c.in_channels, c.input_size, c.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}")
        b = x.shape[0]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor [B], got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if tuple(t.shape) != (b,):
            raise ValueError(f"t must be [B] = [{b}], got {list(t.shape)}")
        self.check_dtype()
        weight = self.patch_embed.proj.weight
        if x.device != weight.device or t.device != x.device:
            raise ValueError(f"x ({x.device}) and t ({t.device}) must be on the model's device "
                             f"({weight.device})")
        if not compiling and x.dtype != weight.dtype and \
                not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {str(x.dtype).replace('torch.', '')} but the model's "
                            f"parameters are {str(weight.dtype).replace('torch.', '')}: pass x "
                            f"in the model's dtype (x.to(model.dtype)) or run under "
                            f"torch.autocast")
        self._check_text(text, b)
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("y must be None for a model without classes (num_classes=0)")
        else:
            if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"y must be an int64 or int32 tensor [B] of labels, got "
                                f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
            if tuple(y.shape) != (b,):
                raise ValueError(f"y must be [B] = [{b}], got {list(y.shape)}")
            if y.device != x.device:
                raise ValueError(f"y ({y.device}) must be on x's device ({x.device})")
        if compiling:                                      # value checks would break the graph
            return
        debug = os.environ.get("SGKERNELS_DEBUG") == "1"
        if t.device.type == "cpu" or debug:
            if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):   # NaN fails both
                bad = int((~((t >= 0) & (t <= 1))).nonzero()[0, 0])
                raise ValueError(f"t must be finite and in [0, 1] (t = 1 is data), got "
                                 f"t[{bad}] = {float(t[bad])}")
        if y is not None and (y.device.type == "cpu" or debug):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) > c.num_classes):
                raise ValueError(f"labels y must be in [0, {c.num_classes}] "
                                 f"({c.num_classes} = null class), got "
                                 f"[{int(y.min())}, {int(y.max())}]")
        if debug and x.numel() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
            raise ValueError(f"x holds NaN or inf (first in sample {bad}) "
                             f"[SGKERNELS_DEBUG=1 check]")

    def _segment_gammas(self, gamma: Gamma, num_segments: int) -> list[tuple[float, ...] | None]:
        """Per route, the host rate of every segment, or None when the route runs dense."""
        if gamma is None:
            if not self.training:
                return [None] * self.num_routes
            rates = [self.config.mask_ratio] if self.config.maskdit else \
                [r.gamma for r in self.config.routes]
            return [(g,) * num_segments if g > 0 else None for g in rates]
        if isinstance(gamma, torch.Tensor):
            if gamma.ndim == 0:
                gamma = gamma.item()
            elif gamma.ndim == 1 and gamma.is_floating_point():
                gamma = gamma.tolist()                 # host copy: keep counts size the buffers
            else:
                raise ValueError(f"gamma tensor must be a float tensor [{num_segments}], "
                                 f"got {gamma.dtype} {list(gamma.shape)}")
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
            per = (check_gamma(gamma),) * num_segments
        elif isinstance(gamma, Sequence) and not isinstance(gamma, str):
            if len(gamma) != num_segments:
                raise ValueError(f"gamma must have one rate per sample ({num_segments}), "
                                 f"got {len(gamma)}")
            per = tuple(check_gamma(g, f"gamma[{i}]") for i, g in enumerate(gamma))
        else:
            raise TypeError(f"gamma must be None, a float or a [B] tensor, got "
                            f"{type(gamma).__name__}")
        active = per if any(g > 0 for g in per) else None
        if active is not None and self.num_routes == 0:
            raise ValueError(f"gamma > 0 (got max {max(per)}) needs a model with token routes "
                             f"(config.routes) or MaskDiT masking; this model has neither, so "
                             f"it cannot drop tokens: pass gamma=0 or None")
        return [active] * self.num_routes

    # ----------------------------------------------------------------------------- forward
    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
              text: TextBatch | None = None) -> TokenBatch:
        """Patch tokens (+ sin-cos positions for sit) and cond of each image, as a TokenBatch;
        with text, segment b is [refined caption b; image tokens b] and cond adds the pooled
        caption vector."""
        tokens = self.patch_embed(x)
        g = self.config.grid_size
        pos = grid_pos(g, g, x.device)
        if self.config.flavour == "sit":
            tokens = tokens + sincos_2d(pos, self.config.dim).to(tokens.dtype)
        cond = self.t_embedder(t)
        if self.y_embedder is not None:
            cond = cond + self.y_embedder(y)
        if text is None:
            return dense_batch(tokens, pos, cond.to(tokens.dtype))
        words, pooled = self.text(text)
        return join(words, text.lengths, tokens, pos, (cond + pooled).to(tokens.dtype))

    def forward_tokens(self, batch: TokenBatch, gamma: Gamma = None,
                       route_scores: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, return_keep: bool = False):
        """Packed forward: TokenBatch -> output tokens [T, p*p*C_out] (+ keep [R, T] bool).

        gamma: None, a float, or one rate per segment; route_scores: [R, T] float or None.
        With text tokens (batch.text_lengths) the rates act on image tokens, text rows of
        route_scores are ignored, and out / keep hold the image-token rows only.
        """
        s, t = batch.num_segments, batch.x.shape[0]
        gammas = self._segment_gammas(gamma, s)
        r = self.num_routes
        if route_scores is not None and tuple(route_scores.shape) != (r, t):
            raise ValueError(f"route_scores must be [R, T] = [{r}, {t}], "
                             f"got {list(route_scores.shape)}")
        if route_scores is None and any(g is not None for g in gammas):
            route_scores = routing.uniform_scores((r, t), generator, batch.x.device)
        plans = [routing.plan_route(batch, g, route_scores[i]) if g is not None else None
                 for i, g in enumerate(gammas)]
        rows = batch.image_rows() if batch.text_lengths else None
        out = self._run(batch, plans, rows)
        if not return_keep:
            return out
        keep = torch.ones((r, t), dtype=torch.bool, device=batch.x.device)
        for i, plan in enumerate(plans):
            if plan is not None:
                keep[i] = plan.keep
        return out, (keep if rows is None else keep[:, rows])

    def _run(self, batch: TokenBatch, plans: list[routing.RoutePlan | None],
             image_rows: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.maskdit:
            b = routing.gather(batch, plans[0]) if plans[0] is not None else batch
            for block in self.blocks:
                b = b.replace(x=self._block(block, b))
            b = self.decoder(self.decoder.fill(batch, b.x, plans[0]), self.checkpoint_blocks)
        else:
            b = batch
            starts = {route.start: i for i, route in enumerate(self.config.routes)}
            saved, active = None, None
            for k, block in enumerate(self.blocks):
                i = starts.get(k)
                if i is not None and plans[i] is not None:
                    saved, active = b, i
                    b = self._route_start(block, b, plans[i])
                else:
                    b = b.replace(x=self._block(block, b))
                if active is not None and k == self.config.routes[active].end:
                    b = saved.replace(x=routing.scatter(saved.x, b.x, plans[active]))
                    saved, active = None, None
        if image_rows is not None:                         # decode the image tokens only
            b = b.replace(x=ops.route_gather(b.x, image_rows), seg=b.seg[image_rows])
        return self.final(b)

    def _route_start(self, block: DiTBlock, b: TokenBatch, plan: routing.RoutePlan) -> TokenBatch:
        """Gather the kept tokens and run the route's first block on them. Llama flavour: the
        gather and the block's first RMSNorm-modulate are one fused op."""
        if self.config.flavour != "llama":
            b = routing.gather(b, plan)
            return b.replace(x=self._block(block, b))
        mod = block.modulation(b.cond)
        b, h = routing.gather_rms_norm_modulate(b, plan, mod[0], mod[1], self.config.norm_eps)
        return b.replace(x=self._block(block, b, mod, h))

    def _block(self, block: DiTBlock, b: TokenBatch, mod=None, h=None) -> torch.Tensor:
        return call_block(block, b, mod, h, self.checkpoint_blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                gamma: Gamma = None, generator: torch.Generator | None = None,
                route_scores: torch.Tensor | None = None, return_keep: bool = False,
                text: TextBatch | None = None):
        """The velocity v(x, t | y or text) of a batch of images, blocks run on routed tokens.

        Route r (blocks config.routes[r].start..end) keeps, in sample b with N image tokens,
        the keep(N, gamma_b) = max(1, N - floor(N * gamma_b + 1e-9)) tokens of lowest
        route_scores[r, b] (ties by index) in their original order; dropped tokens re-enter
        after the route with their pre-route activations. Equal scores give equal selections,
        so branches evaluated packed or separately can be compared exactly. In MaskDiT mode
        the encoder sees the kept (visible) tokens of the one mask and the decoder every one.

        Args:
            x: images float [B, C, H, W] (C = config.in_channels, H = W = config.input_size)
                in the parameters' dtype `model.dtype` (fp32, bf16 or fp16; any float dtype
                under torch.autocast), on the model's device.
            t: times float [B] in [0, 1] (t = 1 is data), on the model's device.
            y: class labels int64 or int32 [B] in [0, num_classes] (num_classes is the null
                class), on x's device; None for a model without classes (num_classes = 0)
                and for a text-conditioned model.
            gamma: drop rates in [0, 1) (0 = dense): None (train mode: the config's route
                rates, MaskDiT: config.mask_ratio; eval mode: dense), a float for every
                sample, or one rate per sample (a list of B floats, which costs no device
                sync and keeps the forward one torch.compile graph, or a float tensor [B],
                copied to the host once). The rate is forced on every route.
            generator: torch.Generator of the default route scores.
            route_scores: float [R, B, N] (R = model.num_routes, N = config.num_tokens) or
                None: uniform random scores from `generator`, drawn only when a route is
                active.
            return_keep: also return the keep mask.
            text: a TextBatch of B captions of width config.text_dim for a text-conditioned
                model (segment b holds [refined caption b; image tokens b]; caption tokens are
                never routed and always kept), None otherwise.

        Returns:
            velocity [B, C, H, W] in the model's compute dtype (the parameters' dtype, or
            the autocast dtype); with learn_sigma the first C of the 2C predicted channels.
            With return_keep=True the pair (velocity, keep [R, B, N] bool): keep[r, b, i] is
            True when image token i of sample b went through the blocks of route r (all True
            for a dense route; MaskDiT: R = 1 and keep[0] is the visible-token mask).

        Raises:
            TypeError: x or t not a floating tensor; y not an int64 / int32 tensor; the
                parameters not fp32 / bf16 / fp16 (`model.check_dtype()`); x in another dtype
                than the parameters outside autocast; text not a TextBatch for a
                text-conditioned model; gamma not None, a float, a sequence or a tensor.
            ValueError: x not [B, C, H, W] of the config; t, y or gamma not of length B (a
                gamma tensor: float [B]);
                route_scores not [R, B, N]; x, t, y not on the model's device; t outside
                [0, 1] or y outside [0, num_classes] (checked on CPU, and on CUDA under
                SGKERNELS_DEBUG=1); x not finite (under SGKERNELS_DEBUG=1); a rate outside
                [0, 1); gamma > 0 on a model without routes or MaskDiT; y given to a model
                without classes; text given to a model without text conditioning, or not
                B captions of width text_dim.
        """
        self._check_inputs(x, t, y, text)
        c = self.config
        bsz, n = x.shape[0], c.num_tokens
        if route_scores is not None:
            if tuple(route_scores.shape) != (self.num_routes, bsz, n):
                raise ValueError(f"route_scores must be [R, B, N] = [{self.num_routes}, {bsz}, "
                                 f"{n}], got {list(route_scores.shape)}")
            route_scores = route_scores.reshape(self.num_routes, bsz * n)
        batch = self.embed(x, t, y, text)
        if route_scores is not None and batch.text_lengths:   # image scores at image rows
            full = route_scores.new_zeros((self.num_routes, batch.x.shape[0]))
            route_scores = full.index_copy(1, batch.image_rows(), route_scores)
        out = self.forward_tokens(batch, gamma, route_scores, generator, return_keep)
        if return_keep:
            out, keep = out
        v = unpatchify(out.view(bsz, n, -1), c.patch_size, c.input_size, c.input_size)
        v = v[:, : c.in_channels]
        return (v, keep.view(self.num_routes, bsz, n)) if return_keep else v
