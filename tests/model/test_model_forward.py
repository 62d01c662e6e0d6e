"""RoutedDiT call contract: shapes, gradients, routing semantics, packing, rates, init."""
import pytest
import torch
from model_helpers import inputs, randomize_, small_config

from sgkernels.model import RoutedDiT, keep_count


def test_forward_backward_each_flavour(flavour_config):
    model = randomize_(RoutedDiT(flavour_config)).train()
    x, t, y = inputs(flavour_config)
    x.requires_grad_(True)
    v = model(x, t, y, generator=torch.Generator().manual_seed(0))
    assert v.shape == x.shape and torch.isfinite(v).all()
    v.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_learn_sigma_returns_velocity_channels_only():
    cfg = small_config("sit", learn_sigma=True)
    model = randomize_(RoutedDiT(cfg)).eval()
    x, t, y = inputs(cfg)
    assert model.final.linear.out_features == 4 * 2 * cfg.in_channels
    v = model(x, t, y)
    assert v.shape == x.shape
    # The velocity channels are the first C of the 2C predicted: dropping the sigma half of the
    # final linear (rows with channel index >= C in the (p, p, C) layout) changes nothing.
    with torch.no_grad():
        w = model.final.linear.weight.view(4, 2 * cfg.in_channels, -1)
        w[:, cfg.in_channels:] = 0
    assert torch.equal(model(x, t, y), v)


@pytest.mark.parametrize("flavour", ["sit", "llama"])
def test_route_counts_exact(flavour):
    cfg = small_config(flavour)
    model = RoutedDiT(cfg).train()
    x, t, y = inputs(cfg, batch=3)
    with model.record_token_counts() as counts:
        model(x, t, y, gamma=torch.tensor([0.5, 0.25, 0.9]))
        model(x, t, y)                                      # train mode: config rate 0.5
        model(x, t, y, gamma=0.0)
    # keep(16, .5) = 8, keep(16, .25) = 12, keep(16, .9) = 16 - floor(14.4) = 2; blocks 1..2 routed
    assert counts[0] == [48, 22, 22, 48]
    assert counts[1] == [48, 24, 24, 48]
    assert counts[2] == [48] * 4
    model(x, t, y)
    assert len(counts) == 3                                 # hooks removed on exit


def test_token_counts_skip_blocks_recomputed_in_backward(flavour_config):
    model = randomize_(RoutedDiT(flavour_config)).train().set_activation_checkpointing("blocks")
    x, t, y = inputs(flavour_config)
    with model.record_token_counts() as counts:
        model(x, t, y, gamma=0.0).square().mean().backward()
    blocks = flavour_config.depth + flavour_config.decoder_depth
    assert counts == [[48] * blocks]


def test_maskdit_counts_and_keep_mask():
    cfg = small_config("sit", maskdit=True)
    model = RoutedDiT(cfg).train()
    x, t, y = inputs(cfg, batch=2)
    with model.record_token_counts() as counts:
        v, keep = model(x, t, y, gamma=torch.tensor([0.75, 0.3]), return_keep=True)
    assert keep.shape == (1, 2, 16) and keep.dtype == torch.bool
    assert keep.sum(-1).tolist() == [[keep_count(16, 0.75), keep_count(16, 0.3)]]
    assert counts[-1] == [4 + 12] * cfg.depth + [32] * cfg.decoder_depth


def test_keep_mask_selects_lowest_scores_in_order():
    cfg = small_config("llama")
    model = RoutedDiT(cfg).train()
    x, t, y = inputs(cfg, batch=2)
    scores = torch.rand(1, 2, 16, generator=torch.Generator().manual_seed(3))
    _, keep = model(x, t, y, gamma=0.75, route_scores=scores, return_keep=True)
    for b in range(2):
        lowest = set(torch.argsort(scores[0, b])[:4].tolist())
        assert set(torch.nonzero(keep[0, b]).flatten().tolist()) == lowest


def test_dropped_tokens_reenter_with_pre_route_activations():
    cfg = small_config("llama")
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg, batch=2)
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, a, out: seen.__setitem__("before", out))
    model.blocks[3].register_forward_pre_hook(lambda m, a: seen.__setitem__("after", a[0].x))
    _, keep = model(x, t, y, gamma=0.5, return_keep=True)
    dropped = ~keep[0].flatten()
    assert dropped.sum() == 16
    assert torch.equal(seen["after"][dropped], seen["before"][dropped])
    assert not torch.allclose(seen["after"][~dropped], seen["before"][~dropped])


@pytest.mark.parametrize("flavour", ["sit", "llama"])
def test_gamma_zero_equals_model_without_routes(flavour):
    cfg = small_config(flavour)
    routed = randomize_(RoutedDiT(cfg)).train()
    plain = RoutedDiT(cfg.replace(routes=())).train()
    plain.load_state_dict(routed.state_dict())
    x, t, y = inputs(cfg)
    torch.testing.assert_close(routed(x, t, y, gamma=0.0), plain(x, t, y), rtol=0, atol=0)
    assert not torch.allclose(routed(x, t, y, gamma=0.5), plain(x, t, y))


def test_nonzero_gamma_without_routes_is_an_error():
    cfg = small_config("llama", routes=())
    model = RoutedDiT(cfg).eval()
    x, t, y = inputs(cfg)
    assert model(x, t, y, gamma=[0.0, 0.0, 0.0]).shape == x.shape     # dense: fine
    for gamma in (0.5, [0.0, 0.25, 0.0], torch.tensor([0.5, 0.5, 0.5])):
        with pytest.raises(ValueError, match="gamma > 0"):
            model(x, t, y, gamma=gamma)


def test_packed_segments_equal_separate_forwards(flavour_config):
    cfg = flavour_config
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg, batch=4)
    gammas = [0.0, 0.3, 0.5, 0.9]
    scores = torch.rand(model.num_routes, 4, cfg.num_tokens,
                        generator=torch.Generator().manual_seed(1))
    packed = model(x, t, y, gamma=torch.tensor(gammas), route_scores=scores)
    for b, g in enumerate(gammas):
        alone = model(x[b:b + 1], t[b:b + 1], y[b:b + 1], gamma=g, route_scores=scores[:, b:b + 1])
        torch.testing.assert_close(packed[b:b + 1], alone, rtol=1e-5, atol=1e-5)


def test_forward_tokens_on_concatenated_batches():
    cfg = small_config("llama")
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg, batch=4)
    first, second = model.embed(x[:2], t[:2], y[:2]), model.embed(x[2:], t[2:], y[2:])
    packed = type(first).cat([first, second])
    assert packed.cu_seqlens.tolist() == [0, 16, 32, 48, 64] and packed.seg.max() == 3
    scores = torch.rand(1, 64, generator=torch.Generator().manual_seed(2))
    out = model.forward_tokens(packed, [0.2, 0.5, 0.5, 0.7], scores)
    ref_a = model.forward_tokens(first, [0.2, 0.5], scores[:, :32])
    ref_b = model.forward_tokens(second, [0.5, 0.7], scores[:, 32:])
    torch.testing.assert_close(out, torch.cat([ref_a, ref_b]), rtol=1e-5, atol=1e-5)


def test_float_gamma_equals_per_sample_tensor():
    cfg = small_config("sit")
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg)
    scores = torch.rand(1, 3, 16, generator=torch.Generator().manual_seed(4))
    a = model(x, t, y, gamma=0.4, route_scores=scores)
    b = model(x, t, y, gamma=torch.full((3,), 0.4), route_scores=scores)
    assert torch.equal(a, b)


def test_eval_mode_dense_by_default():
    cfg = small_config("llama")
    model = randomize_(RoutedDiT(cfg)).eval()
    x, t, y = inputs(cfg)
    with model.record_token_counts() as counts:
        v = model(x, t, y)
        assert counts[-1] == [48] * 4
        assert torch.equal(v, model(x, t, y, gamma=0.0))
        model(x, t, y, gamma=0.5)                           # explicit rates still apply in eval
    assert counts[-1] == [48, 24, 24, 48]


def test_generator_reproducible():
    cfg = small_config("llama")
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg)
    run = lambda seed: model(x, t, y, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(7), run(7))
    assert not torch.allclose(run(7), run(8))


def test_adaln_zero_init_output_independent_of_blocks(flavour_config):
    model = RoutedDiT(flavour_config).eval()
    with torch.no_grad():                                   # a non-trivial output layer
        model.final.linear.weight.normal_(generator=torch.Generator().manual_seed(0))
    x, t, y = inputs(flavour_config)
    before = model(x, t, y)
    assert before.abs().sum() > 0
    blocks = [*model.blocks, *(model.decoder.blocks if model.decoder is not None else [])]
    with torch.no_grad():
        for block in blocks:
            for name, p in block.named_parameters():
                if not name.startswith("adaLN"):
                    p.add_(torch.randn_like(p))
    torch.testing.assert_close(model(x, t, y), before, rtol=0, atol=0)
    with torch.no_grad():
        blocks[0].adaLN.weight.normal_()
    assert not torch.allclose(model(x, t, y), before)


def test_unconditional_model_takes_no_labels():
    cfg = small_config("llama", num_classes=0)
    model = RoutedDiT(cfg).eval()
    x, t, _ = inputs(small_config("llama"))
    assert model(x, t).shape == x.shape
    with pytest.raises(ValueError, match="num_classes=0"):
        model(x, t, torch.zeros(3, dtype=torch.int64))


def test_forward_backward_without_host_syncs(flavour_config):
    # Meta tensors hold no data, so any .item()/.tolist()/nonzero on the hot path would raise:
    # with rates given on the host, the routed forward and backward are sync-free.
    with torch.device("meta"):
        model = RoutedDiT(flavour_config).train()
        x = torch.randn(3, flavour_config.in_channels, 8, 8, requires_grad=True)
        t, y = torch.rand(3), torch.zeros(3, dtype=torch.int64)
        with model.record_token_counts() as counts:
            v, keep = model(x, t, y, gamma=[0.5, 0.2, 0.0], return_keep=True)
        v.sum().backward()
    assert v.shape == x.shape and x.grad.shape == x.shape and keep.shape == (1, 3, 16)
    kept = 8 + 13 + 16                                      # keep(16, .5), keep(16, .2), 16
    expected = [kept] * 4 + [48] * 2 if flavour_config.maskdit else [48, kept, kept, 48]
    assert counts == [expected]


def test_maskdit_output_ignores_masked_patches():
    # The encoder never sees masked tokens and the decoder puts the mask token there, so the
    # input pixels of masked patches cannot influence the output (unlike TREAD routing).
    cfg = small_config("llama", maskdit=True)
    model = randomize_(RoutedDiT(cfg)).train()
    x, t, y = inputs(cfg, batch=2)
    scores = torch.rand(1, 2, 16, generator=torch.Generator().manual_seed(6))
    v, keep = model(x, t, y, gamma=0.5, route_scores=scores, return_keep=True)
    pixel_mask = keep[0].view(2, 1, 4, 1, 4, 1).expand(2, 2, 4, 2, 4, 2).reshape(2, 2, 8, 8)
    noisy = torch.where(pixel_mask, x, torch.randn_like(x) * 5)
    assert torch.equal(model(noisy, t, y, gamma=0.5, route_scores=scores), v)
    routed = randomize_(RoutedDiT(small_config("llama"))).train()
    assert not torch.equal(routed(noisy, t, y, gamma=0.5, route_scores=scores),
                           routed(x, t, y, gamma=0.5, route_scores=scores))
