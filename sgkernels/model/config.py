"""Model configuration of the routed DiT.

A `ModelConfig` fully describes a `RoutedDiT`: image geometry (input_size x input_size latent with
in_channels, split into patch_size x patch_size patches, N = (input_size / patch_size)^2 tokens),
the transformer (depth blocks of width dim with heads attention heads), the block flavour, the
TREAD routes and, in MaskDiT mode (decoder_depth > 0), the decoder.

Flavours (docs/design.md §5):
    "sit"    LayerNorm (no affine) + adaLN-Zero, GELU-tanh MLP of mlp_ratio * dim, biases,
             fixed 2-D sin-cos positions added at the input
    "llama"  RMSNorm pre-norm + adaLN-Zero, SwiGLU with hidden ~ mlp_ratio * dim rounded up to a
             multiple of 64 (mlp_ratio 8/3 by default), axial RoPE, no bias anywhere

A route r_{a->b} at rate gamma runs blocks a..b (inclusive, 0-based) on keep(N, gamma) tokens,
keep(N, gamma) = max(1, N - floor(N * gamma + 1e-9)).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

FLAVOURS = ("sit", "llama")
MLP_MULTIPLE = 64


def keep_count(n: int, gamma: float) -> int:
    """Number of tokens a segment of n tokens keeps at drop rate gamma (at least 1)."""
    return max(1, n - math.floor(n * gamma + 1e-9))


def check_gamma(gamma: float, name: str = "gamma") -> float:
    """Validate one drop rate: a real number in [0, 1)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(gamma).__name__}")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {gamma}")
    return float(gamma)


@dataclass(frozen=True)
class Route:
    """Blocks start..end (inclusive, 0-based) run on the tokens kept at drop rate gamma."""

    start: int
    end: int
    gamma: float

    def __post_init__(self):
        if not (isinstance(self.start, int) and isinstance(self.end, int)):
            raise TypeError(f"Route start/end must be ints, got {self.start!r}, {self.end!r}")
        if not 0 <= self.start <= self.end:
            raise ValueError(
                f"Route needs 0 <= start <= end, got start={self.start}, end={self.end}")
        check_gamma(self.gamma, "Route.gamma")


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    num_classes: int = 1000
    depth: int = 28
    dim: int = 1152
    heads: int = 16
    flavour: str = "sit"
    mlp_ratio: float = 4.0
    routes: tuple[Route, ...] = ()
    learn_sigma: bool = False
    mask_ratio: float = 0.0
    decoder_depth: int = 0
    decoder_dim: int = 512
    decoder_heads: int = 16
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    time_freq_dim: int = 256
    time_scale: float = 1000.0
    # Text conditioning (T2I, model/text.py): text_dim = width E of the frozen encoder's token
    # features, text_layers = trainable refiner layers on them, text_len = caption tokens the
    # FLOP counter assumes per image (the longest caption the encoder keeps).
    text_conditioned: bool = False
    text_dim: int = 0
    text_len: int = 0
    text_layers: int = 0

    def __post_init__(self):
        routes = tuple(r if isinstance(r, Route) else Route(*r) for r in self.routes)
        object.__setattr__(self, "routes", routes)
        for name in ("input_size", "patch_size", "in_channels", "depth", "dim", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_classes < 0:
            raise ValueError(f"ModelConfig.num_classes must be >= 0, got {self.num_classes}")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"ModelConfig.input_size ({self.input_size}) must be divisible by "
                f"patch_size ({self.patch_size})")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"ModelConfig.flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        _check_heads("dim", self.dim, "heads", self.heads, self.flavour)
        if not self.mlp_ratio > 0:
            raise ValueError(f"ModelConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        check_gamma(self.mask_ratio, "ModelConfig.mask_ratio")
        for r in self.routes:
            if r.end >= self.depth:
                raise ValueError(f"{r} ends past the last block (depth {self.depth})")
        for a, b in zip(self.routes, self.routes[1:]):
            if b.start <= a.end:
                raise ValueError(f"routes must be sorted and disjoint, got {a} then {b}")
        if self.text_conditioned:
            _check_text(self)
        if self.decoder_depth < 0:
            raise ValueError(f"ModelConfig.decoder_depth must be >= 0, got {self.decoder_depth}")
        if self.decoder_depth:
            if self.routes:
                raise ValueError("MaskDiT mode (decoder_depth > 0) cannot be combined with routes")
            _check_heads("decoder_dim", self.decoder_dim, "decoder_heads", self.decoder_heads,
                         self.flavour)

    # Derived sizes, shared by the model and the FLOP counter.
    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size ** 2

    @property
    def maskdit(self) -> bool:
        return self.decoder_depth > 0

    @property
    def bias(self) -> bool:
        return self.flavour == "sit"

    def mlp_hidden(self, dim: int) -> int:
        """Hidden width of the MLP of a block of width dim."""
        if self.flavour == "sit":
            return int(dim * self.mlp_ratio)
        return MLP_MULTIPLE * math.ceil(int(dim * self.mlp_ratio) / MLP_MULTIPLE)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["routes"] = [[r.start, r.end, r.gamma] for r in self.routes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}")
        d = dict(d)
        routes = d.get("routes", ())
        d["routes"] = tuple(
            Route(**r) if isinstance(r, dict) else Route(int(r[0]), int(r[1]), float(r[2]))
            for r in routes)
        return cls(**d)


def _check_text(c: ModelConfig) -> None:
    for name in ("text_dim", "text_len"):
        value = getattr(c, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"text-conditioned ModelConfig.{name} must be a positive int, "
                             f"got {value!r}")
    if not isinstance(c.text_layers, int) or c.text_layers < 0:
        raise ValueError(f"ModelConfig.text_layers must be an int >= 0, got {c.text_layers!r}")
    if c.num_classes:
        raise ValueError(f"a text-conditioned model takes captions, not classes: num_classes "
                         f"must be 0, got {c.num_classes}")
    if c.decoder_depth:
        raise ValueError("text conditioning is not supported in MaskDiT mode (decoder_depth > 0)")


def _check_heads(dim_name: str, dim: int, heads_name: str, heads: int, flavour: str) -> None:
    if heads < 1 or dim % heads:
        raise ValueError(f"ModelConfig.{dim_name} ({dim}) must be divisible by "
                         f"{heads_name} ({heads})")
    if flavour == "sit" and dim % 4:
        raise ValueError(f"sit flavour needs {dim_name} divisible by 4 for the 2-D sin-cos "
                         f"positions, got {dim}")
    if flavour == "llama" and (dim // heads) % 4:
        raise ValueError(f"llama flavour needs a head dim divisible by 4 for axial RoPE, got "
                         f"{dim_name} {dim} / {heads_name} {heads} = {dim // heads}")
