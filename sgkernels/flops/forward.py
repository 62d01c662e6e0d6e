"""Analytic forward cost of a RoutedDiT per image (docs/design.md §8).

Counts multiply-accumulates (the paper's "FLOPs") of every linear/conv layer the model runs for
one image, with N = (input_size/p)^2 tokens, D = dim, F = time_freq_dim, P = C·p², O = p²·C_out:

    patch embed      N·P·D
    time embedder    F·D + D·D                       (label embedding lookups are free)
    block, n tokens  adaLN Dc·6d + qkv 3n·d² + proj n·d²
                     + MLP: sit 2n·d·h (h = 4d), llama 3n·d·h (h ~ 8/3 d, w1 is d x 2h)
    final layer      adaLN Dc·2d + linear N·d·O

where a block inside an active route runs on n = keep(N, gamma) tokens, else n = N. MaskDiT:
encoder blocks on the visible n = keep(N, gamma) tokens, decoder embed n·D·D_dec, decoder blocks
at width D_dec on N tokens (cond width Dc = D), final layer at D_dec.
convention="full" adds the attention products QKᵀ and PV: 2·n²·d per block.

Text-conditioned models (T2I) with L caption tokens per image (default config.text_len, E =
text_dim): every block also runs on the L text tokens (they are never routed, n -> n + L), and

    text             projection L·E·D + refiner text_layers·(4L·D² + MLP(L)) + pooled D·D
                     ("full": + 2·L²·D per refiner layer)

SiT-XL/2, dense, paper convention: 114,393,563,136 MACs = 114.39 GFLOPs (blocks 114.15 +
adaLN 0.223 + patch/time/final 0.018); full: 118.62 (attention 4.23).
"""
from __future__ import annotations

from sgkernels.model.config import ModelConfig, check_gamma, keep_count

CONVENTIONS = ("paper", "full")


def _text_tokens(config: ModelConfig, text_len: int | None) -> int:
    if not config.text_conditioned:
        if text_len:
            raise ValueError("text_len is only meaningful for a text-conditioned config")
        return 0
    n = config.text_len if text_len is None else text_len
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"text_len must be a positive int, got {n!r}")
    return n


def block_token_counts(config: ModelConfig, gamma: float | None = 0.0,
                       text_len: int | None = None) -> list[int]:
    """Tokens each block (encoder blocks, then decoder blocks) processes for one image.

    gamma: a rate forced on every route (MaskDiT: the mask rate), or None for the config's rates.
    text_len: caption tokens per image of a text-conditioned model (None: config.text_len).
    """
    text = _text_tokens(config, text_len)
    n = config.num_tokens
    if config.maskdit:
        rate = config.mask_ratio if gamma is None else check_gamma(gamma)
        return [keep_count(n, rate) if rate > 0 else n] * config.depth + [n] * config.decoder_depth
    if gamma is not None:
        check_gamma(gamma)
    counts = [n + text] * config.depth
    for route in config.routes:
        rate = route.gamma if gamma is None else gamma
        if rate > 0:
            for b in range(route.start, route.end + 1):
                counts[b] = keep_count(n, rate) + text
    return counts


def _block_macs(config: ModelConfig, n: int, d: int, cond_dim: int, full: bool) -> int:
    h = config.mlp_hidden(d)
    mlp = (3 if config.flavour == "llama" else 2) * n * d * h
    macs = cond_dim * 6 * d + 4 * n * d * d + mlp
    return macs + (2 * n * n * d if full else 0)


def _text_macs(config: ModelConfig, n: int, full: bool) -> int:
    d = config.dim
    layer = _block_macs(config, n, d, 0, full)             # refiner layer: no adaLN
    return n * config.text_dim * d + config.text_layers * layer + d * d


def forward_macs(config: ModelConfig, gamma: float | None = 0.0,
                 convention: str = "paper", text_len: int | None = None) -> dict[str, int]:
    """MACs per image by part: patch_embed, t_embedder, text, blocks, decoder, final."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    full = convention == "full"
    n, d = config.num_tokens, config.dim
    counts = block_token_counts(config, gamma, text_len)
    text = _text_tokens(config, text_len)
    parts = {
        "patch_embed": n * config.patch_dim * d,
        "t_embedder": config.time_freq_dim * d + d * d,
        "text": _text_macs(config, text, full) if text else 0,
        "blocks": sum(_block_macs(config, k, d, d, full) for k in counts[: config.depth]),
        "decoder": 0,
    }
    width = d
    if config.maskdit:
        width = config.decoder_dim
        parts["decoder"] = counts[0] * d * width + sum(
            _block_macs(config, k, width, d, full) for k in counts[config.depth:])
    parts["final"] = d * 2 * width + n * width * config.patch_size ** 2 * config.out_channels
    return parts


def forward_gflops(config: ModelConfig, gamma: float | None = 0.0,
                   convention: str = "paper", text_len: int | None = None) -> float:
    """GFLOPs (10^9 MACs, paper convention) of one forward pass per image."""
    return sum(forward_macs(config, gamma, convention, text_len).values()) / 1e9
