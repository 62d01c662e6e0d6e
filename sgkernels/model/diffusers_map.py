"""diffusers' DiTTransformer2DModel <-> RoutedDiT, through the official DiT layout (official.py).

    diffusers ({w} = weight | bias, {i} = block)          official
    pos_embed.proj.{w}                                     x_embedder.proj.{w}
    transformer_blocks.{i}.norm1.emb.timestep_embedder.    t_embedder.mlp.{0,2}.{w}
        linear_{1,2}.{w}
    transformer_blocks.{i}.norm1.emb.class_embedder.       y_embedder.embedding_table.weight
        embedding_table.weight
    transformer_blocks.{i}.norm1.linear.{w}                blocks.{i}.adaLN_modulation.1.{w}
    transformer_blocks.{i}.attn1.to_{q,k,v}.{w}            blocks.{i}.attn.qkv.{w}  (rows q; k; v)
    transformer_blocks.{i}.attn1.to_out.0.{w}              blocks.{i}.attn.proj.{w}
    transformer_blocks.{i}.ff.net.0.proj.{w}               blocks.{i}.mlp.fc1.{w}
    transformer_blocks.{i}.ff.net.2.{w}                    blocks.{i}.mlp.fc2.{w}
    proj_out_1.{w}                                         final_layer.adaLN_modulation.1.{w}
    proj_out_2.{w}                                         final_layer.linear.{w}
    pos_embed.pos_embed (a buffer outside the state dict)  pos_embed

diffusers keeps one copy of the time and label embedders per block (every copy must be equal;
the final layer uses block 0's). Its forward takes DiT's timesteps: call it with
timestep = time_scale · t (1000 t for a "dit" RoutedDiT), and its output holds all 2C channels
of a learn_sigma model, where RoutedDiT.forward returns the first C.

diffusers' DiT differs from the official network in two constants, not in weights: its time
features use frequencies 10000^(-j/(F/2 - 1)) (Timesteps with downscale_freq_shift=1) where DiT
uses 10000^(-j/(F/2)), and the LayerNorm before each MLP uses config.norm_eps (default 1e-5)
where DiT uses 1e-6. `to_diffusers` builds its model with norm_eps 1e-6 and sets
downscale_freq_shift to 0 in every block, so that model computes exactly what the RoutedDiT
does; the shift lives outside diffusers' config (save_pretrained / from_pretrained restore 1).
`from_diffusers` maps the weights into the official network, which a stock diffusers DiT
approximates. diffusers is imported only inside these functions (the `latent` extra).
"""
from __future__ import annotations

import torch

from .config import ModelConfig
from .dit import RoutedDiT
from .official import NORM_EPS, infer_config, load_official, official_state_dict

MLP_RATIO = 4.0                     # diffusers' FeedForward: hidden = 4 · D, not configurable
_EMBEDDER = ("norm1.emb.timestep_embedder.linear_1.", "norm1.emb.timestep_embedder.linear_2.",
             "norm1.emb.class_embedder.embedding_table.")
_OFFICIAL_EMBEDDER = ("t_embedder.mlp.0.", "t_embedder.mlp.2.", "y_embedder.embedding_table.")
_BLOCK = (("norm1.linear.", "adaLN_modulation.1."), ("attn1.to_out.0.", "attn.proj."),
          ("ff.net.0.proj.", "mlp.fc1."), ("ff.net.2.", "mlp.fc2."))
_TOP = (("pos_embed.proj.", "x_embedder.proj."), ("proj_out_1.", "final_layer.adaLN_modulation.1."),
        ("proj_out_2.", "final_layer.linear."))
_QKV = ("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")


def _suffixes(state: dict, prefix: str) -> list[str]:
    return [k[len(prefix):] for k in state if k.startswith(prefix)]


def _official_from_diffusers(dm) -> dict[str, torch.Tensor]:
    """Official-layout state dict of a DiTTransformer2DModel; ValueError naming the first key
    that has no official counterpart or an embedder copy that differs from block 0's."""
    state = dict(dm.state_dict())
    out = {"pos_embed": dm.pos_embed.pos_embed.detach().clone()}

    def move(src: str, dst: str) -> None:
        for s in _suffixes(state, src):
            out[dst + s] = state.pop(src + s)

    for src, dst in _TOP:
        move(src, dst)
    for i in range(len(dm.transformer_blocks)):
        pre = f"transformer_blocks.{i}."
        for src, dst in zip(_EMBEDDER, _OFFICIAL_EMBEDDER):
            for s in _suffixes(state, pre + src):
                value = state.pop(pre + src + s)
                if i == 0:
                    out[dst + s] = value
                elif not torch.equal(value, out[dst + s]):
                    raise ValueError(f"diffusers model: {pre + src + s} differs from block 0's "
                                     f"copy; the official DiT has one embedder for all blocks")
        for src, dst in _BLOCK:
            move(pre + src, f"blocks.{i}.{dst}")
        for s in ("weight", "bias"):
            parts = [state.pop(pre + q + s, None) for q in _QKV]
            if any(p is None for p in parts):
                raise ValueError(f"diffusers model: {pre}attn1.to_q/to_k/to_v.{s} missing")
            out[f"blocks.{i}.attn.qkv.{s}"] = torch.cat(parts)
    if state:
        raise ValueError(f"diffusers model: {sorted(state)[0]} has no counterpart in the "
                         f"official DiT ({len(state)} such keys)")
    return out


def _diffusers_from_official(state: dict, depth: int) -> dict[str, torch.Tensor]:
    """Inverse of _official_from_diffusers (pos_embed dropped: diffusers computes it)."""
    out = {}

    def copy(src: str, dst: str) -> None:
        for s in _suffixes(state, src):
            out[dst + s] = state[src + s]

    for dst, src in _TOP:
        copy(src, dst)
    for i in range(depth):
        pre = f"transformer_blocks.{i}."
        for dst, src in zip(_EMBEDDER, _OFFICIAL_EMBEDDER):
            copy(src, pre + dst)
        for dst, src in _BLOCK:
            copy(f"blocks.{i}.{src}", pre + dst)
        for s in ("weight", "bias"):
            for q, part in zip(_QKV, state[f"blocks.{i}.attn.qkv.{s}"].chunk(3)):
                out[pre + q + s] = part
    return out


def to_diffusers(model: RoutedDiT):
    """DiTTransformer2DModel (fp32, eval mode) computing what `model` does, called with
    timestep = time_scale · t; learn_sigma channels included (module docstring: its time
    frequencies and norm eps are set to DiT's)."""
    from diffusers import DiTTransformer2DModel

    state = official_state_dict(model)
    c: ModelConfig = model.config
    if c.mlp_ratio != MLP_RATIO:
        raise ValueError(f"diffusers' DiT has an MLP of {MLP_RATIO:g}·D, this model "
                         f"mlp_ratio {c.mlp_ratio}")
    dm = DiTTransformer2DModel(
        num_attention_heads=c.heads, attention_head_dim=c.dim // c.heads,
        in_channels=c.in_channels, out_channels=c.out_channels, num_layers=c.depth,
        sample_size=c.input_size, patch_size=c.patch_size, num_embeds_ada_norm=c.num_classes,
        norm_eps=NORM_EPS)
    dm.load_state_dict(_diffusers_from_official(state, c.depth))
    for block in dm.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return dm.eval()


def from_diffusers(dm, kind: str = "dit", routes=None) -> RoutedDiT:
    """RoutedDiT (eval mode) with the weights of a DiTTransformer2DModel. kind "dit" (the
    diffusers DiT pipelines: timesteps 0..1000, noise prediction) or "sit" (SiT weights stored in
    diffusers' layout); routes as in load_official."""
    cfg = dm.config
    wrong = [(name, want, cfg.get(name)) for name, want in (
        ("norm_type", "ada_norm_zero"), ("activation_fn", "gelu-approximate"),
        ("attention_bias", True), ("norm_elementwise_affine", False))
        if cfg.get(name) != want]
    if wrong:
        raise ValueError("from_diffusers needs a DiT-shaped model: " + "; ".join(
            f"config.{name} {want!r}, got {got!r}" for name, want, got in wrong))
    state = _official_from_diffusers(dm)
    config = infer_config(state, kind, heads=cfg.num_attention_heads, name="diffusers model")
    return load_official(state, kind, config, routes=routes, name="diffusers model")
