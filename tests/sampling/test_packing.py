"""One packed forward per model and step equals evaluating the branches one by one with the same
token selections (route-score slices), on a token-dropping toy and on the real RoutedDiT."""
import pytest
import torch

from sampling_fakes import ConstantModel, TokenDropModel

from sgkernels.guidance import CFG, AutoGuidance, CFGSparseGuidance, SparseGuidance
from sgkernels.sampling import sample
from sgkernels.sampling.packing import draw_route_scores, guided_velocity

GUIDANCES = [
    SparseGuidance(2.0, 0.25, 0.75),
    CFG(3.0, gamma=0.5),
    CFGSparseGuidance(2.0, 0.5, 0.25, 0.75, rule="inner"),
    CFGSparseGuidance(1.5, 0.5, 0.0, 0.5, rule="direct"),
]


def run(model, guidance, seed, packed, steps=3, solver="euler", batch=2, size=4, channels=1):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, channels, size, size, generator=g)
    labels = torch.arange(batch) % 10
    return sample(model, noise, labels, steps=steps, solver=solver, guidance=guidance,
                  generator=g, packed=packed)


@pytest.mark.parametrize("guidance", GUIDANCES)
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_packed_equals_separate_on_token_drop_toy(guidance, solver):
    packed_model, separate_model = TokenDropModel(), TokenDropModel()
    packed = run(packed_model, guidance, 0, True, solver=solver)
    separate = run(separate_model, guidance, 0, False, solver=solver)
    torch.testing.assert_close(packed, separate, rtol=1e-6, atol=1e-6)
    k = len(guidance.branches(0, 3))
    evals = 3 * (2 if solver == "heun" else 1)
    assert [c["batch"] for c in packed_model.calls] == [2 * k] * evals
    assert [c["batch"] for c in separate_model.calls] == [2] * (k * evals)
    # the token selection matters: another seed gives other samples
    assert not torch.allclose(packed, run(TokenDropModel(), guidance, 1, True, solver=solver))


def test_same_seed_reproduces():
    g = SparseGuidance(2.0, 0.25, 0.75)
    torch.testing.assert_close(run(TokenDropModel(), g, 3, True), run(TokenDropModel(), g, 3, True),
                               rtol=0, atol=0)


def test_weak_model_runs_its_own_forward():
    main, weak = ConstantModel(), ConstantModel(offset=5.0)
    run(main, SparseGuidance(2.0, 0.2, 0.5, weak_model=weak), 0, True, steps=2)
    assert [c["batch"] for c in main.calls] == [2, 2]
    assert [c["gamma"] for c in weak.calls] == [[0.5, 0.5]] * 2
    # the same module as main and weak: both branches share one packed forward
    shared = ConstantModel()
    run(shared, AutoGuidance(shared, 2.0), 0, True, steps=1)
    assert [c["batch"] for c in shared.calls] == [4]


def test_route_scores_come_from_the_generator():
    config = TokenDropModel().config
    a = draw_route_scores(config, 3, torch.Generator().manual_seed(7), "cpu")
    b = draw_route_scores(config, 3, torch.Generator().manual_seed(7), "cpu")
    assert a.shape == (2, 3, 16) and torch.equal(a, b)


def test_missing_weak_model_is_an_error():
    class NoWeak(SparseGuidance):
        def _rule(self, step, steps):       # a rule naming "weak" without a weak model
            return [(b._replace(model="weak"), c) for b, c in super()._rule(step, steps)]
    terms = NoWeak(2.0, 0.2, 0.5).terms(0, 1)
    with pytest.raises(ValueError, match="weak_model"):
        guided_velocity({"main": ConstantModel(), "weak": None}, torch.zeros(1, 1, 2, 2), 0.0,
                        torch.zeros(1, dtype=torch.int64), terms)


def test_sample_rejects_bad_inputs():
    model = ConstantModel()
    noise, labels = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must be an int64"):
        sample(model, noise, labels.float())
    with pytest.raises(ValueError, match="labels must be"):
        sample(model, noise, labels[:1])
    with pytest.raises(ValueError, match="noise must be"):
        sample(model, noise[0], labels)
    with pytest.raises(TypeError, match="guidance must be"):
        sample(model, noise, labels, guidance="cfg")
    with pytest.raises(TypeError, match="model must be"):
        sample(lambda *a, **k: None, noise, labels)
    with pytest.raises(ValueError, match="solver"):
        sample(model, noise, labels, solver="rk4")
    with pytest.raises(TypeError, match="weak_model must be a callable"):
        sample(model, noise, labels, guidance=AutoGuidance(model.config, 2.0))


# ------------------------------------------------------------------ the real RoutedDiT
def tiny_model(config=None, seed=0):
    from sgkernels import presets
    from sgkernels.model import RoutedDiT
    torch.manual_seed(seed)
    model = RoutedDiT(config or presets.get("Tiny/2")).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                   # leave adaLN-Zero: make every layer matter
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def tiny_maskdit():
    from sgkernels.model import ModelConfig
    return ModelConfig(input_size=8, patch_size=2, in_channels=1, num_classes=10, depth=2,
                       dim=32, heads=2, mask_ratio=0.5, decoder_depth=1, decoder_dim=32,
                       decoder_heads=2)


@pytest.mark.parametrize("guidance", GUIDANCES[::2] + [CFG(3.0)])
def test_packed_equals_separate_on_routed_dit(guidance):
    model = tiny_model()
    kw = dict(steps=1, size=28, batch=2)
    packed = run(model, guidance, 0, True, **kw)
    separate = run(model, guidance, 0, False, **kw)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)
    if any(b.gamma > 0 for b in guidance.branches(0, 1)):
        other = run(model, guidance, 1, True, **kw)
        assert (other - packed).abs().max() > 1e-3, "token selection must depend on the seed"


def test_packed_equals_separate_on_maskdit():
    model = tiny_model(tiny_maskdit())
    guidance = CFGSparseGuidance(2.0, 0.5, 0.25, 0.75, rule="inner")
    kw = dict(steps=2, size=8, batch=3)
    packed = run(model, guidance, 0, True, **kw)
    torch.testing.assert_close(packed, run(model, guidance, 0, False, **kw), rtol=1e-5, atol=1e-5)
    assert (run(model, guidance, 1, True, **kw) - packed).abs().max() > 1e-3


def test_routed_dit_packed_branches_drop_tokens():
    model = tiny_model()
    x = torch.randn(2, 1, 28, 28)
    terms = SparseGuidance(2.0, 0.25, 0.75).terms(0, 1)
    with model.record_token_counts() as counts:
        guided_velocity({"main": model}, x, 0.3, torch.tensor([1, 2]), terms,
                        torch.Generator().manual_seed(0))
    # block 1 is routed: 2 images at γ 0.25 keep 196 − 49 tokens, 2 at γ 0.75 keep 196 − 147
    assert counts == [[4 * 196, 2 * 147 + 2 * 49, 4 * 196]]
