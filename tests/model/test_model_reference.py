"""RoutedDiT against an independent plain-PyTorch forward (per image, SDPA, complex RoPE).

The reference follows the published formulas (DiT adaLN-Zero block, Llama block with axial RoPE
and SwiGLU) and routes by indexing each image's kept tokens (from return_keep) itself, so a
mistake in packing, position gathering, head layout or modulation order would show up here.
"""
import pytest
import torch
import torch.nn.functional as F
from model_helpers import inputs, randomize_, small_config

from sgkernels.model import RoutedDiT, Route


def _rope(x, pos, theta):
    """x [N, H, Dh]; rows rotate channels [0, Dh/2), cols [Dh/2, Dh); pair j with j + Dh/4."""
    half, quarter = x.shape[-1] // 2, x.shape[-1] // 4
    freqs = theta ** (-2.0 * torch.arange(quarter, dtype=torch.float64) / half)
    out = []
    for axis in (0, 1):
        part = x[..., axis * half:(axis + 1) * half].double()
        z = torch.complex(part[..., :quarter], part[..., quarter:])
        z = z * torch.polar(torch.ones((), dtype=torch.float64), pos[:, axis, None].double() * freqs)[:, None]
        out += [z.real, z.imag]
    return torch.cat(out, -1).float()


def _norm_mod(cfg, x, shift, scale):
    if cfg.flavour == "llama":
        h = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + cfg.norm_eps)
    else:
        h = F.layer_norm(x, (x.shape[-1],), eps=cfg.norm_eps)
    return h * (1 + scale) + shift


def _block(cfg, blk, x, pos, c):
    """One block on one image: x [n, D], pos [n, 2], c [D]."""
    s1, sc1, g1, s2, sc2, g2 = blk.adaLN(F.silu(c)).chunk(6)
    n, d = x.shape
    heads = blk.attn.heads
    q, k, v = blk.attn.qkv(_norm_mod(cfg, x, s1, sc1)).view(n, 3, heads, d // heads).unbind(1)
    if cfg.flavour == "llama":
        q, k = _rope(q, pos, cfg.rope_theta), _rope(k, pos, cfg.rope_theta)
    o = F.scaled_dot_product_attention(*(z.transpose(0, 1) for z in (q, k, v)))
    x = x + g1 * blk.attn.proj(o.transpose(0, 1).reshape(n, d))
    h = _norm_mod(cfg, x, s2, sc2)
    if cfg.flavour == "llama":
        a, b = blk.mlp.w1(h).chunk(2, -1)
        m = blk.mlp.w2(F.silu(a) * b)
    else:
        m = blk.mlp.fc2(F.gelu(blk.mlp.fc1(h), approximate="tanh"))
    return x + g2 * m


def _sincos(pos, dim):
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    col, row = pos[:, 1, None].double() * omega, pos[:, 0, None].double() * omega
    return torch.cat([col.sin(), col.cos(), row.sin(), row.cos()], 1).float()


def _reference(model, x, t, y, keep):
    cfg = model.config
    g, p = cfg.grid_size, cfg.patch_size
    pos = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1)
    pos = pos.reshape(-1, 2)
    tok = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    if cfg.flavour == "sit":
        tok = tok + _sincos(pos, cfg.dim)
    c = model.t_embedder(t) + model.y_embedder.table(y)
    outs = []
    for b in range(x.shape[0]):
        h = tok[b]
        for i, blk in enumerate(model.blocks):
            route = [r for r, rt in enumerate(cfg.routes) if rt.start <= i <= rt.end]
            sel = keep[route[0], b] if route else torch.ones(len(h), dtype=torch.bool)
            h = h.clone()
            h[sel] = _block(cfg, blk, h[sel], pos[sel], c[b])
        s, sc = model.final.adaLN(F.silu(c[b])).chunk(2)
        out = model.final.linear(_norm_mod(cfg, h, s, sc))           # [N, p*p*C_out]
        img = out.view(g, g, p, p, -1).permute(4, 0, 2, 1, 3).reshape(-1, g * p, g * p)
        outs.append(img[: cfg.in_channels])
    return torch.stack(outs)


@pytest.mark.parametrize("flavour", ["sit", "llama"])
@pytest.mark.parametrize("gamma", [0.0, [0.5, 0.25, 0.75]])
def test_matches_plain_torch_reference(flavour, gamma):
    cfg = small_config(flavour, depth=5, routes=(Route(1, 2, 0.5), Route(4, 4, 0.5)),
                       learn_sigma=flavour == "sit")
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg)
    v, keep = model(x, t, y, gamma=gamma, return_keep=True,
                    generator=torch.Generator().manual_seed(5))
    if gamma:
        assert not keep.all() and not torch.equal(keep[0], keep[1])
    with torch.no_grad():
        ref = _reference(model, x, t, y, keep)
    torch.testing.assert_close(v, ref, rtol=1e-4, atol=1e-4)
