"""Official DiT (facebookresearch/DiT) and SiT (willisma/SiT) weights <-> RoutedDiT.

The official networks are the "sit" flavour of RoutedDiT: LayerNorm without affine, adaLN-Zero
with rows (shift, scale, gate) of attention then of the MLP, GELU-tanh MLP, fixed 2-D sin-cos
positions added at the input, a label table whose last row is the null class. Only the names
differ ({w} = weight | bias, {i} = block):

    official                               RoutedDiT
    x_embedder.proj.{w}                    patch_embed.proj.{w}
    t_embedder.mlp.{0,2}.{w}               t_embedder.mlp.{0,2}.{w}
    y_embedder.embedding_table.weight      y_embedder.table.weight        K + 1 rows, null last
    blocks.{i}.adaLN_modulation.1.{w}      blocks.{i}.adaLN.{w}           6·D rows
    blocks.{i}.attn.{qkv,proj}.{w}         blocks.{i}.attn.{qkv,proj}.{w}
    blocks.{i}.mlp.{fc1,fc2}.{w}           blocks.{i}.mlp.{fc1,fc2}.{w}
    final_layer.adaLN_modulation.1.{w}     final.adaLN.{w}                2·D rows: shift, scale
    final_layer.linear.{w}                 final.linear.{w}
    pos_embed [1, N, D]                    none: embedders.sincos_2d, checked against it on load

Time. Both embed a scalar s as [cos(s f_j), sin(s f_j)], f_j = 10000^(-j/128); RoutedDiT takes
t in [0, 1] and embeds s = time_scale · t, so model(x, t, y) is the official network at s:
    sit  time_scale 1: SiT's t is the package's (t = 1 data, t = 0 noise) and SiT predicts the
         velocity d x_t/dt of x_t = t x + (1 - t) z, as sgkernels.flow: the samplers use it as is.
    dit  time_scale 1000: model(x, t, y) = DiT(x, s = 1000 t, y), DiT's DDPM step s (s = 0 is the
         data end) and its noise prediction ε: not a velocity, so the flow samplers refuse it.
learn_sigma: the official models predict 2C channels (DiT's second half is its learned variance,
SiT ignores it); forward_tokens keeps all of them, forward returns the first C.

Routes have no weights: a dense-trained official model may be given routes on load (`routes`),
and then drops tokens at sampling time only (the user's choice; docs/interop.md).
"""
from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping

import torch

from .checkpoint import EXPECTED, load_file, model_from_checkpoint, non_finite, state_problems
from .config import ModelConfig, Route
from .dit import RoutedDiT
from .embedders import sincos_2d
from .tokens import grid_pos

KINDS = ("dit", "sit")
TIME_SCALES = {"dit": 1000.0, "sit": 1.0}
TITLES = {"dit": "DiT", "sit": "SiT"}
HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}      # widths of the official S, B, L, XL models
FREQ_DIM = 256                                      # the official timestep feature width
NORM_EPS = 1e-6                                     # the official LayerNorm eps
POS_ATOL = 1e-5
OFFICIAL = ("an official DiT / SiT checkpoint (a state dict with x_embedder.proj.weight, ..., "
            "or a dict holding one under 'ema' or 'model')")

_FIELDS = {"i": r"\d+", "w": "weight|bias", "k": "0|2", "a": "qkv|proj", "f": "fc1|fc2"}
_NAMES = (                                          # (official, RoutedDiT) key templates
    ("x_embedder.proj.{w}", "patch_embed.proj.{w}"),
    ("t_embedder.mlp.{k}.{w}", "t_embedder.mlp.{k}.{w}"),
    ("y_embedder.embedding_table.weight", "y_embedder.table.weight"),
    ("blocks.{i}.adaLN_modulation.1.{w}", "blocks.{i}.adaLN.{w}"),
    ("blocks.{i}.attn.{a}.{w}", "blocks.{i}.attn.{a}.{w}"),
    ("blocks.{i}.mlp.{f}.{w}", "blocks.{i}.mlp.{f}.{w}"),
    ("final_layer.adaLN_modulation.1.{w}", "final.adaLN.{w}"),
    ("final_layer.linear.{w}", "final.linear.{w}"),
)


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)          # literal, field, literal, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})"
                              for i, p in enumerate(parts)))


_RULES = tuple((_pattern(o), _pattern(p), o, p) for o, p in _NAMES)


def official_key(key: str) -> str:
    """The official name of a RoutedDiT parameter (KeyError for one it has none of)."""
    for _, pattern, template, _ in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    raise KeyError(key)


def package_key(key: str) -> str | None:
    """The RoutedDiT name of an official parameter, None for an unknown key."""
    for pattern, _, _, template in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (DiT: noise prediction at steps 0..999; "
                         f"SiT: velocity at t in [0, 1]), got {kind!r}")
    return kind


def check_official_config(config: ModelConfig) -> None:
    """ValueError unless the config is one the official DiT / SiT code can build."""
    wrong = [(name, want, getattr(config, name)) for name, want in (
        ("flavour", "sit"), ("decoder_depth", 0), ("text_conditioned", False))
        if getattr(config, name) != want]
    if config.num_classes < 1:
        wrong.append(("num_classes", ">= 1 (the official models are class-conditional)",
                      config.num_classes))
    if wrong:
        raise ValueError("the official DiT / SiT architecture needs " + "; ".join(
            f"config.{name} {want!r}, got {got!r}" for name, want, got in wrong))


def _weights(state, name: str, which: str) -> dict[str, torch.Tensor]:
    """The state dict in an official checkpoint object: raw, or under 'ema' / 'model'."""
    def is_state(d):
        return isinstance(d, Mapping) and d and all(isinstance(v, torch.Tensor)
                                                    for v in d.values())
    if is_state(state):
        return dict(state)
    if isinstance(state, Mapping) and is_state(state.get(which)):
        return dict(state[which])
    keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
    raise ValueError(f"{name}: expected {OFFICIAL}; got {keys} (weights={which!r})")


def _need(state: dict, key: str, name: str, what: str, ndim: int) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = "missing" if value is None else f"shape {list(value.shape)}"
        raise ValueError(f"{name}: official key {key!r} ({what}) is {got}; expected {OFFICIAL}")
    return value


def infer_config(state: Mapping, kind: str, heads: int | None = None,
                 name: str = "state_dict") -> ModelConfig:
    """The ModelConfig of official weights: depth, width D, patch p, channels C, input size,
    classes, mlp ratio, learn_sigma from the shapes; heads from `heads` or the official width
    table HEADS (attention heads leave no trace in the weights); time_scale of `kind`."""
    kind = _check_kind(kind)
    state = _weights(state, name, "ema")
    patch = _need(state, "x_embedder.proj.weight", name, "patch embedding [D, C, p, p]", 4)
    dim, channels, p = patch.shape[0], patch.shape[1], patch.shape[2]
    pos = _need(state, "pos_embed", name, "positions [1, N, D]", 3)
    grid = math.isqrt(pos.shape[1])
    if grid * grid != pos.shape[1]:
        raise ValueError(f"{name}: pos_embed holds {pos.shape[1]} positions, not a square grid")
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in state:
        depth += 1
    if depth == 0:
        raise ValueError(f"{name}: official key 'blocks.0.attn.qkv.weight' is missing; expected "
                         f"{OFFICIAL}")
    table = _need(state, "y_embedder.embedding_table.weight", name,
                  "label table [classes + 1, D]", 2)
    hidden = _need(state, "blocks.0.mlp.fc1.weight", name, "MLP [hidden, D]", 2).shape[0]
    out = _need(state, "final_layer.linear.weight", name, "output [p·p·C_out, D]", 2).shape[0]
    if out not in (p * p * channels, 2 * p * p * channels):
        raise ValueError(f"{name}: final_layer.linear.weight has {out} rows; expected "
                         f"p·p·C = {p * p * channels} or 2·p·p·C (learn_sigma)")
    freq = _need(state, "t_embedder.mlp.0.weight", name, "time MLP [D, F]", 2).shape[1]
    if heads is None:
        if dim not in HEADS:
            raise ValueError(f"{name}: width {dim} is none of the official DiT / SiT widths "
                             f"{sorted(HEADS)}, and the weights do not record the number of "
                             f"attention heads: pass config=ModelConfig(..., heads=H)")
        heads = HEADS[dim]
    return ModelConfig(input_size=grid * p, patch_size=p, in_channels=channels,
                       num_classes=table.shape[0] - 1, depth=depth, dim=dim, heads=heads,
                       flavour="sit", mlp_ratio=hidden / dim, learn_sigma=out != p * p * channels,
                       time_freq_dim=freq, time_scale=TIME_SCALES[kind], norm_eps=NORM_EPS)


def official_positions(config: ModelConfig) -> torch.Tensor:
    """The fixed position table pos_embed [1, N, D] of the official code (= sincos_2d)."""
    g = config.grid_size
    return sincos_2d(grid_pos(g, g, "cpu"), config.dim)[None]


def _routes(routes) -> tuple[Route, ...]:
    """Routes from Route objects, (start, end) pairs (training rate 0) or (start, end, gamma)."""
    out = []
    for r in routes:
        if not isinstance(r, Route):
            if not isinstance(r, (tuple, list)) or len(r) not in (2, 3):
                raise ValueError(f"routes: expected Route, (start, end) or (start, end, gamma) "
                                 f"items, got {r!r}")
            r = Route(*r) if len(r) == 3 else Route(r[0], r[1], 0.0)
        out.append(r)
    return tuple(out)


def load_official(source, kind: str, config: ModelConfig | None = None, *,
                  routes=None, weights: str = "ema", name: str | None = None) -> RoutedDiT:
    """RoutedDiT with the weights of an official DiT or SiT checkpoint (module docstring).

    Args:
        source: path of the file, or the loaded object: a state dict, or a dict holding one under
            'ema' and / or 'model' (official training checkpoints).
        kind: "dit" or "sit": one layout, two time conventions (time_scale 1000 / 1).
        config: None infers the architecture from the weights (infer_config); a ModelConfig is
            checked against them and gets the kind's time_scale.
        routes: None keeps the config's routes (none when inferred); else Route or
            (start, end[, gamma]) items. A dense-trained model routed at sampling is the
            caller's choice.
        weights: "ema" or "model": which state dict of a training checkpoint (a bare state dict
            is used as it is).
        name: how error messages call the source (default: the path, or "state_dict").

    Returns:
        RoutedDiT in eval mode, fp32 on CPU: model(x, t, y) with t in [0, 1] is the official
        network at time time_scale · t, the first C channels; forward_tokens keeps all 2C.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: an unreadable file, an unknown kind, official keys missing, unknown or of
            the wrong shape (named, with the expected architecture), a pos_embed other than the
            fixed sin-cos table, NaN / inf weights, a width outside HEADS without a config.
        TypeError: config is neither None nor a ModelConfig.
    """
    kind = _check_kind(kind)
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        source = load_file(source, expected=OFFICIAL, safe_globals=(argparse.Namespace,))
    name = name or "state_dict"
    state = _weights(source, name, weights)
    if config is None:
        config = infer_config(state, kind, name=name)
    elif not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig or None, got {type(config).__name__}")
    config = config.replace(time_scale=TIME_SCALES[kind])
    if routes is not None:
        config = config.replace(routes=_routes(routes))
    check_official_config(config)
    model = RoutedDiT(config)
    expected = {official_key(k): v for k, v in model.state_dict().items()}
    expected["pos_embed"] = official_positions(config)
    problems = state_problems(expected, state)
    if problems:
        raise ValueError(f"{name}: the weights do not fit an official {TITLES[kind]} of depth "
                         f"{config.depth}, width {config.dim}, patch {config.patch_size}, input "
                         f"{config.input_size}: {'; '.join(problems)}")
    deviation = float((state["pos_embed"].float() - expected["pos_embed"]).abs().max())
    if deviation > POS_ATOL:
        raise ValueError(f"{name}: pos_embed is not the fixed 2-D sin-cos table of a "
                         f"{config.grid_size}x{config.grid_size} grid (max deviation "
                         f"{deviation:.3g}); learned positions are not supported")
    bad = non_finite(state)
    if bad:
        raise ValueError(f"{name}: the weights hold NaN or inf in {', '.join(bad[:3])}")
    model.load_state_dict({package_key(k): v for k, v in state.items() if k != "pos_embed"})
    return model.eval()


def official_state_dict(model: RoutedDiT) -> dict[str, torch.Tensor]:
    """The official-layout state dict of a RoutedDiT (pos_embed included), any time_scale."""
    if not isinstance(model, RoutedDiT):
        raise TypeError(f"model must be a RoutedDiT, got {type(model).__name__}")
    c = model.config
    check_official_config(c)
    for field, value in (("time_freq_dim", FREQ_DIM), ("norm_eps", NORM_EPS)):
        if getattr(c, field) != value:
            raise ValueError(f"the official code builds config.{field} {value}, this model has "
                             f"{getattr(c, field)}")
    state = {official_key(k): v.detach().clone() for k, v in model.state_dict().items()}
    weight = model.patch_embed.proj.weight
    state["pos_embed"] = official_positions(c).to(weight.device, weight.dtype)
    return state


def to_official(model: RoutedDiT, kind: str) -> dict[str, torch.Tensor]:
    """The state dict the official `kind` code loads (model.load_state_dict) to compute what
    `model` computes; routes are dropped (they hold no weights). The model's time_scale must be
    the kind's (1 for sit, 1000 for dit): a time embedding cannot be rescaled exactly."""
    kind = _check_kind(kind)
    scale = model.config.time_scale if isinstance(model, RoutedDiT) else None
    if scale is not None and scale != TIME_SCALES[kind]:
        other = next(k for k in KINDS if k != kind)
        hint = f"; export it as kind={other!r}" if scale == TIME_SCALES[other] else ""
        raise ValueError(f"the model embeds t with time_scale {scale:g}, the official "
                         f"{TITLES[kind]} code with {TIME_SCALES[kind]:g}{hint}")
    return official_state_dict(model)


def load_model(path, kind: str = "auto", *, ema: bool = True,
               routes=None) -> tuple[RoutedDiT, str]:
    """(RoutedDiT in eval mode on CPU, its kind) from a sgkernels training checkpoint or an
    official one. kind: "sgkernels", "dit", "sit" or "auto" (sgkernels checkpoints by their
    model_config; official training checkpoints by their args: SiT's have path_type; a bare
    official state dict cannot tell DiT from SiT and needs the kind)."""
    name = os.fspath(path)
    kinds = ("auto", "sgkernels", *KINDS)
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    obj = load_file(path, expected=f"{EXPECTED} or {OFFICIAL}",
                    safe_globals=(argparse.Namespace,))
    if kind == "auto":
        kind = detect_kind(obj, name)
    if kind != "sgkernels":
        return load_official(obj, kind, routes=routes, weights="ema" if ema else "model",
                             name=name), kind
    if routes:
        raise ValueError(f"routes are for official checkpoints; {name!r} is a sgkernels "
                         f"checkpoint whose model_config holds its routes")
    return model_from_checkpoint(obj, name, ema), kind


def detect_kind(obj, name: str) -> str:
    """'sgkernels', 'dit' or 'sit' for a loaded checkpoint object (see load_model)."""
    if isinstance(obj, Mapping):
        for state in (obj, obj.get("ema"), obj.get("model")):
            if isinstance(state, Mapping) and "x_embedder.proj.weight" in state:
                args = obj.get("args")
                if isinstance(args, argparse.Namespace):
                    return "sit" if hasattr(args, "path_type") else "dit"
                raise ValueError(
                    f"checkpoint {name!r} holds official weights without training arguments, "
                    f"and DiT and SiT share one layout: give the kind, 'sit' (SiT: velocity, "
                    f"t in [0, 1]) or 'dit' (DiT: noise prediction, steps 0..999)")
    return "sgkernels"
