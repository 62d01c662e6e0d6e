"""RoutedDiT against an independent DiT implementation, diffusers' DiTTransformer2DModel, with
random weights converted both ways (sgkernels/model/diffusers_map.py): equal outputs to fp32
precision, all 2C learn_sigma channels, at diffusers' timestep = 1000 t."""
import pytest
import torch
from model_helpers import DIT_S2, inputs, randomize_

from sgkernels.model import RoutedDiT, load_official, to_official
from sgkernels.model.tokens import unpatchify

diffusers = pytest.importorskip("diffusers")
from sgkernels.model.diffusers_map import from_diffusers, to_diffusers  # noqa: E402

DIT = DIT_S2.replace(time_scale=1000.0)
ATOL = 1e-5


def random_(model, seed: int):
    """Random weights of std 0.05 (randomize_'s 0.2 makes width-384 activations large enough
    that fp32 rounding of two summation orders exceeds ATOL)."""
    randomize_(model, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.25)
    return model


def all_channels(model: RoutedDiT, x, t, y) -> torch.Tensor:
    """[B, 2C, H, W]: the prediction and the learn_sigma channels (forward returns the first C)."""
    c = model.config
    out = model.forward_tokens(model.embed(x, t, y)).view(x.shape[0], c.num_tokens, -1)
    return unpatchify(out, c.patch_size, c.input_size, c.input_size)


def run_diffusers(dm, x, t, y) -> torch.Tensor:
    return dm(x, timestep=t * 1000, class_labels=y).sample


def random_diffusers(seed: int = 0):
    """A DiT-S/2-shaped diffusers model with random weights, the per-block embedders tied (the
    official DiT has one), DiT's LayerNorm eps and time frequencies."""
    torch.manual_seed(seed)
    dm = diffusers.DiTTransformer2DModel(
        num_attention_heads=DIT.heads, attention_head_dim=DIT.dim // DIT.heads, in_channels=4,
        out_channels=8, num_layers=DIT.depth, sample_size=DIT.input_size, patch_size=2,
        num_embeds_ada_norm=DIT.num_classes, norm_eps=1e-6)
    random_(dm, seed)
    first = dm.transformer_blocks[0].norm1.emb
    for block in dm.transformer_blocks:
        block.norm1.emb.load_state_dict(first.state_dict())
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return dm.eval()


@pytest.fixture(scope="module")
def data():
    return inputs(DIT)


@torch.no_grad()
def test_routed_dit_to_diffusers(data):
    model = random_(RoutedDiT(DIT), seed=3).eval()
    dm = to_diffusers(model)
    want = run_diffusers(dm, *data)
    assert want.shape[1] == 2 * DIT.in_channels
    torch.testing.assert_close(all_channels(model, *data), want, rtol=0, atol=ATOL)
    torch.testing.assert_close(model(*data), want[:, :DIT.in_channels], rtol=0, atol=ATOL)


@torch.no_grad()
def test_diffusers_to_routed_dit(data):
    dm = random_diffusers()
    model = from_diffusers(dm)
    assert model.config == DIT
    torch.testing.assert_close(all_channels(model, *data), run_diffusers(dm, *data), rtol=0,
                               atol=ATOL)


@torch.no_grad()
def test_official_layout_matches_diffusers_both_ways(data):
    """official state dict -> RoutedDiT equals diffusers; diffusers -> official -> diffusers is
    exact; diffusers' own pos_embed passed load_official's check of the sin-cos table."""
    dm = random_diffusers(seed=1)
    state = to_official(from_diffusers(dm), "dit")
    torch.testing.assert_close(state["pos_embed"], dm.pos_embed.pos_embed, rtol=0, atol=1e-6)
    model = load_official(state, "dit")
    torch.testing.assert_close(all_channels(model, *data), run_diffusers(dm, *data), rtol=0,
                               atol=ATOL)
    back = to_diffusers(model).state_dict()
    for key, value in dm.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0, msg=key)


@torch.no_grad()
def test_stock_diffusers_time_features_differ_from_dit(data):
    """diffusers' default downscale_freq_shift=1 embeds time with 10000^(-j/127), DiT with
    10000^(-j/128): the same weights give other outputs (docs/interop.md)."""
    dm = random_diffusers()
    exact = run_diffusers(dm, *data)
    for block in dm.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 1
    assert (run_diffusers(dm, *data) - exact).abs().max() > 1e-2


def test_untied_embedders_are_named():
    dm = random_diffusers()
    with torch.no_grad():
        dm.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1)
    with pytest.raises(ValueError, match=r"transformer_blocks\.1\.norm1\.emb\.timestep_embedder"
                                         r"\.linear_1\.bias differs from block 0's copy"):
        from_diffusers(dm)
