"""Text conditioning in RoutedDiT: text tokens never routed, packed varlen captions equal separate
evaluation, segment isolation, positions, validation, checkpoints."""
import pytest
import torch
from t2i_helpers import captions, images, random_model, text_config

from sgkernels.model import RoutedDiT, TextBatch, from_checkpoint, keep_count


def _capture_block(model, index):
    """Record (input TokenBatch, output x) of every call of block `index`."""
    seen = []
    model.blocks[index].register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    return seen


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_text_tokens_are_never_routed(gamma):
    cfg = text_config()
    model = random_model(cfg).train()
    x, t = images(cfg, 3)
    text = captions((3, 7, 5))
    before, routed = _capture_block(model, 0), _capture_block(model, 1)
    with model.record_token_counts() as counts:
        _, keep = model(x, t, None, text=text, gamma=gamma, return_keep=True)
    (full, full_out), (inner, _) = before[0], routed[0]
    n, kept = cfg.num_tokens, keep_count(cfg.num_tokens, gamma)
    assert inner.text_lengths == (3, 7, 5)
    assert inner.segment_lengths() == tuple(m + kept for m in (3, 7, 5))
    assert counts[-1] == [15 + 3 * n, 15 + 3 * kept, 15 + 3 * n]
    # every text row reaches the routed block unchanged, and only image rows were dropped
    assert torch.equal(full_out[full.text_mask()], inner.x[inner.text_mask()])
    assert keep.shape == (1, 3, n) and keep.sum(-1).tolist() == [[kept] * 3]


def test_text_route_scores_are_ignored():
    # Scores that would rank every text token last must not drop any of them.
    cfg = text_config()
    model = random_model(cfg).train()
    x, t = images(cfg, 2)
    batch = model.embed(x, t, None, captions((4, 2)))
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(1, batch.x.shape[0], generator=g)
    worst = scores.masked_fill(batch.text_mask(), 2.0)
    assert torch.equal(model.forward_tokens(batch, 0.75, worst),
                       model.forward_tokens(batch, 0.75, scores))


@pytest.mark.parametrize("flavour", ["llama", "sit"])
def test_packed_variable_length_captions_equal_separate_evaluation(flavour):
    cfg = text_config(flavour)
    model = random_model(cfg).eval()
    x, t = images(cfg, 3)
    text = captions((2, 9, 5))
    gammas = [0.5, 0.0, 0.75]
    scores = torch.rand(1, 3, cfg.num_tokens, generator=torch.Generator().manual_seed(3))
    packed = model(x, t, None, text=text, gamma=gammas, route_scores=scores)
    parts = text.split()
    for b in range(3):
        alone = model(x[b:b + 1], t[b:b + 1], None, text=TextBatch.from_list([parts[b]]),
                      gamma=[gammas[b]], route_scores=scores[:, b:b + 1])
        torch.testing.assert_close(packed[b:b + 1], alone, rtol=1e-5, atol=1e-5)


def test_a_caption_conditions_only_its_own_image():
    cfg = text_config()
    model = random_model(cfg).eval()
    x, t = images(cfg, 3)
    text = captions((4, 4, 4))
    other = TextBatch.cat([TextBatch.from_list([p]) for p in
                           (text.split()[0], captions((6,), seed=9).x, text.split()[2])])
    a, b = model(x, t, None, text=text), model(x, t, None, text=other)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_text_positions_do_not_collide_with_the_image_grid():
    cfg = text_config()
    model = random_model(cfg)
    x, t = images(cfg, 2)
    batch = model.embed(x, t, None, captions((3, 5)))
    mask = batch.text_mask()
    assert mask.tolist() == [True] * 3 + [False] * 16 + [True] * 5 + [False] * 16
    text_pos = batch.pos[mask]
    assert text_pos.tolist() == [[j - 3, j - 3] for j in range(3)] + [[j - 5, j - 5]
                                                                      for j in range(5)]
    image_pos = batch.pos[~mask]
    assert (image_pos >= 0).all() and (text_pos < 0).all()
    assert torch.equal(batch.image_rows(), torch.nonzero(~mask).flatten())


def test_pooled_caption_vector_enters_the_adaln_condition():
    cfg = text_config()
    model = random_model(cfg)
    x, t = images(cfg, 2)
    text = captions((3, 5))
    cond = model.embed(x, t, None, text).cond
    tokens, pooled = model.text(text)
    torch.testing.assert_close(cond, model.t_embedder(t) + pooled)
    means = torch.stack([p.mean(0) for p in tokens.split([3, 5])])
    torch.testing.assert_close(pooled, model.text.pool(means))


def test_refiner_and_pool_are_trained():
    cfg = text_config()
    model = random_model(cfg).train()
    x, t = images(cfg, 2)
    model(x, t, None, text=captions((3, 5))).square().mean().backward()
    for name, p in model.text.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_input_validation():
    cfg = text_config()
    model = random_model(cfg)
    x, t = images(cfg, 2)
    with pytest.raises(TypeError, match="TextBatch"):
        model(x, t, None)
    with pytest.raises(ValueError, match="2 captions"):
        model(x, t, None, text=captions((3,)))
    with pytest.raises(ValueError, match="text_dim 24"):
        model(x, t, None, text=captions((3, 3), dim=8))
    with pytest.raises(ValueError, match="num_classes=0"):
        model(x, t, torch.zeros(2, dtype=torch.int64), text=captions((3, 3)))
    with pytest.raises(ValueError, match="num_classes must be 0"):
        text_config(num_classes=10)
    with pytest.raises(ValueError, match="text_dim"):
        text_config(text_dim=0)
    with pytest.raises(ValueError, match="lengths"):
        TextBatch(torch.zeros(0, 4), (0,))
    plain = RoutedDiT(text_config(text_conditioned=False, num_classes=3))
    with pytest.raises(ValueError, match="text must be None"):
        plain(x, t, torch.zeros(2, dtype=torch.int64), text=captions((3, 3)))


def test_checkpoint_round_trip(tmp_path):
    cfg = text_config()
    model = random_model(cfg).eval()
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "opt": {}, "step": 1,
                "args": {"model_config": cfg.to_dict()}}, tmp_path / "c.pt")
    loaded = from_checkpoint(tmp_path / "c.pt")
    x, t = images(cfg, 2)
    text = captions((2, 4))
    assert loaded.config == cfg
    assert torch.equal(loaded(x, t, None, text=text), model(x, t, None, text=text))


def test_fullgraph_compile_matches_eager():
    cfg = text_config()
    model = random_model(cfg).train()
    x, t = images(cfg, 3)
    text = captions((2, 7, 4))
    scores = torch.rand(1, 3, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(text=text, gamma=[0.5, 0.2, 0.0], route_scores=scores)
    x.requires_grad_(True)
    ref = model(x, t, None, **kwargs)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, t, None, **kwargs)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_pooled_caption_mean_is_accumulated_in_float32():
    # bf16 model, long captions: the pooled mean must be the float32 mean of the bf16 tokens
    # rounded once to bf16 (a bf16 running sum drifts by many ulps over hundreds of rows)
    model = random_model(text_config(text_layers=0)).to(torch.bfloat16)
    conditioner = model.text
    seen = {}
    conditioner.pool.register_forward_pre_hook(lambda m, a: seen.setdefault("mean", a[0]))
    text = captions([300, 257, 5], seed=2).to(torch.bfloat16)
    words, _ = conditioner(text)
    rows = words.float().split(list(text.lengths))
    expected = torch.stack([r.mean(0) for r in rows])
    got = seen["mean"]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2 ** -7, atol=1e-6)


@pytest.mark.gpu
def test_pooled_caption_mean_is_bitwise_reproducible_on_cuda():
    model = random_model(text_config()).cuda()
    text = captions([300, 257, 5], seed=2).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        runs = [model.text(text)[1] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
