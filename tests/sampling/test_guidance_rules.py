"""Every guidance rule against a hand computation on controlled model outputs.

ConstantModel outputs D(y; γ) = 1 + 10γ + (100 if y = ∅ else y). With c = 3, γ_s = 0.2, γ_w = 0.5:
D_s(c) = 6, D_w(c) = 9, D_s(∅) = 103, D_w(∅) = 106, dense D(c) = 4, D(∅) = 101.
One Euler step from x_0 = 0 returns exactly the guided velocity at t = 0.
"""
import pytest
import torch

from sampling_fakes import ConstantModel

from sgkernels.guidance import (CFG, AutoGuidance, Branch, CFGSparseGuidance, SparseGuidance,
                                Unguided)
from sgkernels.sampling import sample

LABEL = 3


def one_step(guidance, model=None):
    model = model or ConstantModel()
    noise = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    labels = torch.full((2,), LABEL, dtype=torch.int64)
    out = sample(model, noise, labels, steps=1, guidance=guidance,
                 generator=torch.Generator().manual_seed(0))
    values = out.flatten().unique()
    assert values.numel() == 1, "constant outputs must give a constant guided velocity"
    return values.item(), model


@pytest.mark.parametrize("guidance, expected", [
    (None, 4.0),                                               # D(c), dense
    (Unguided(0.2), 6.0),                                      # D_s(c)
    (CFG(3.0), 101 + 3 * (4 - 101)),                           # -190
    (CFG(2.0, gamma=0.5), 106 + 2 * (9 - 106)),                # CFG on the sparse model: -88
    (SparseGuidance(2.0, 0.2, 0.5), 9 + 2 * (6 - 9)),          # 3
    (CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="direct"), 106 + 2 * (6 - 106) + 0.5 * (6 - 9)),
    (CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="inner"), 3.5 * 6 - 2 * 103 - 0.5 * 9),
    (CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="compositional"),
     106 + 2 * (6 - 106) + 0.5 * (9 - 106)),
    (CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="ip2p"), 106 + 0.5 * (9 - 106) + 2 * (6 - 9)),
])
def test_rule_matches_hand_computation(guidance, expected):
    value, _ = one_step(guidance)
    assert value == pytest.approx(expected, abs=1e-12)


def test_hand_values_spelled_out():
    # guards the parametrized expressions above against a shared mistake
    assert 106 + 2 * (6 - 106) + 0.5 * (6 - 9) == -95.5
    assert 3.5 * 6 - 2 * 103 - 0.5 * 9 == -189.5
    assert 106 + 2 * (6 - 106) + 0.5 * (9 - 106) == -142.5
    assert 106 + 0.5 * (9 - 106) + 2 * (6 - 9) == 51.5


def test_autoguidance_uses_weak_model():
    weak = ConstantModel(offset=21.0)       # D_bad(c) = 21 + 3 = 24
    main = ConstantModel()
    value, _ = one_step(AutoGuidance(weak, 2.0), main)
    assert value == pytest.approx(24 + 2 * (4 - 24))   # -16
    assert len(main.calls) == len(weak.calls) == 1
    assert main.calls[0]["gamma"] == weak.calls[0]["gamma"] == [0.0, 0.0]


def test_sg_with_weak_checkpoint():
    weak = ConstantModel(offset=21.0)       # D_w(c) = 21 + 5 + 3 = 29 from the weak model
    value, main = one_step(SparseGuidance(2.0, 0.2, 0.5, weak_model=weak))
    assert value == pytest.approx(29 + 2 * (6 - 29))
    assert main.calls[0]["gamma"] == [0.2, 0.2] and weak.calls[0]["gamma"] == [0.5, 0.5]


def test_sg_with_gamma_zero_equals_unguided():
    sg, model = one_step(SparseGuidance(3.0, 0.0, 0.0))
    assert sg == one_step(None)[0]
    assert model.calls[0]["batch"] == 2, "both branches are the same: one evaluation"


def test_sg_scale_one_is_strong_branch_alone():
    value, model = one_step(SparseGuidance(1.0, 0.2, 0.5))
    assert value == 6.0
    assert model.calls[0]["gamma"] == [0.2, 0.2]


@pytest.mark.parametrize("rule, cfg_form", [
    ("direct", lambda wc, ws: wc), ("inner", lambda wc, ws: 1 + wc),
    ("compositional", lambda wc, ws: wc + ws), ("ip2p", lambda wc, ws: ws)])
def test_cfg_sg_reduces_to_cfg_with_equal_gammas(rule, cfg_form):
    wc, ws = 2.0, 0.75
    value, model = one_step(CFGSparseGuidance(wc, ws, 0.0, 0.0, rule=rule))
    assert value == pytest.approx(one_step(CFG(cfg_form(wc, ws)))[0], abs=1e-12)
    assert model.calls[0]["batch"] == 4, "only D(c) and D(∅) are evaluated"


@pytest.mark.parametrize("rule, expected", [
    ("direct", 106 + 2 * (6 - 106)),           # D_w(∅) + w_cfg(D_s(c) − D_w(∅))
    ("compositional", 106 + 2 * (6 - 106)),    # the same
    ("inner", 3 * 6 - 2 * 103),                # CFG at γ_strong with scale 1 + w_cfg
    ("ip2p", 106 + 2 * (6 - 9)),               # D_w(∅) + w_cfg(D_s(c) − D_w(c))
])
def test_cfg_sg_without_sg_weight(rule, expected):
    value, _ = one_step(CFGSparseGuidance(2.0, 0.0, 0.2, 0.5, rule=rule))
    assert value == pytest.approx(expected, abs=1e-12)


def terms_of(guidance, step=0, steps=1):
    return {(b.model, b.gamma, b.cond): c for b, c in guidance.terms(step, steps)}


def test_terms_are_the_expanded_linear_combinations():
    s_c, w_c = ("main", 0.2, "cond"), ("main", 0.5, "cond")
    s_n, w_n = ("main", 0.2, "null"), ("main", 0.5, "null")
    assert terms_of(CFG(4.0)) == {("main", 0.0, "cond"): 4.0, ("main", 0.0, "null"): -3.0}
    assert terms_of(SparseGuidance(3.0, 0.2, 0.5)) == {s_c: 3.0, w_c: -2.0}
    assert terms_of(CFGSparseGuidance(2.0, 0.5, 0.2, 0.5)) == {s_c: 2.5, w_c: -0.5, w_n: -1.0}
    assert terms_of(CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="inner")) == {
        s_c: 3.5, s_n: -2.0, w_c: -0.5}
    assert terms_of(CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="compositional")) == {
        s_c: 2.0, w_c: 0.5, w_n: -1.5}
    assert terms_of(CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="ip2p")) == {
        s_c: 2.0, w_c: -1.5, w_n: 0.5}
    for g in (CFG(4.0), SparseGuidance(3.0, 0.2, 0.5), CFGSparseGuidance(2.0, 0.5, 0.2, 0.5)):
        assert sum(c for _, c in g.terms(0, 1)) == pytest.approx(1.0)


@pytest.mark.parametrize("wc, ws", [(2.0, 0.5), (0.5, 2.0), (1.25, 1.25), (0.0, 3.0)])
def test_direct_and_compositional_are_ip2p_in_other_coordinates(wc, ws):
    def rule(name, a, b):
        return terms_of(CFGSparseGuidance(a, b, 0.2, 0.5, rule=name))

    for (lhs, rhs) in ((rule("direct", wc, ws), rule("ip2p", wc + ws, wc)),
                       (rule("compositional", wc, ws), rule("ip2p", wc, wc + ws))):
        assert lhs.keys() == rhs.keys()
        assert all(lhs[k] == pytest.approx(rhs[k], abs=1e-12) for k in lhs)


@pytest.mark.parametrize("guidance, kept", [
    (CFG(1.0), [("main", 0.0, "cond")]),
    (CFG(0.0), [("main", 0.0, "null")]),
    (SparseGuidance(1.0, 0.2, 0.5), [("main", 0.2, "cond")]),
    (SparseGuidance(2.0, 0.4, 0.4), [("main", 0.4, "cond")]),
    (CFGSparseGuidance(1.0, 0.5, 0.2, 0.5, rule="direct"), [("main", 0.2, "cond"),
                                                            ("main", 0.5, "cond")]),
    (CFGSparseGuidance(0.0, 0.5, 0.2, 0.5, rule="inner"), [("main", 0.2, "cond"),
                                                           ("main", 0.5, "cond")]),
    (CFGSparseGuidance(0.7, 0.3, 0.2, 0.5, rule="compositional"), [("main", 0.2, "cond"),
                                                                   ("main", 0.5, "cond")]),
    (CFGSparseGuidance(1.0, 1.0, 0.2, 0.5, rule="ip2p"), [("main", 0.2, "cond")]),
])
def test_zero_weight_branches_are_dropped(guidance, kept):
    assert [tuple(b) for b in guidance.branches(0, 1)] == kept


def test_only_nonzero_branches_are_evaluated_in_one_forward():
    _, model = one_step(CFGSparseGuidance(2.0, 0.5, 0.2, 0.5, rule="inner"))
    assert len(model.calls) == 1
    call = model.calls[0]
    assert call["batch"] == 6
    assert call["gamma"] == [0.2, 0.2, 0.2, 0.2, 0.5, 0.5]
    assert call["labels"] == [LABEL, LABEL, 10, 10, LABEL, LABEL]


def test_interval_falls_back_to_one_conditional_branch():
    steps = 4                                           # t_i = 0, 0.25, 0.5, 0.75
    cfg, sg = CFG(3.0, interval=(0.4, 1.0)), SparseGuidance(2.0, 0.2, 0.5, interval=(0.0, 0.3))
    assert [len(cfg.branches(i, steps)) for i in range(steps)] == [1, 1, 2, 2]
    assert cfg.branches(0, steps) == [Branch("main", 0.0, "cond")]
    assert [len(sg.branches(i, steps)) for i in range(steps)] == [2, 2, 1, 1]
    assert sg.branches(3, steps) == [Branch("main", 0.2, "cond")]
    cfgsg = CFGSparseGuidance(2.0, 1.0, 0.1, 0.6, interval=(0.5, 0.5))
    assert [len(cfgsg.branches(i, steps)) for i in range(steps)] == [1, 1, 3, 1]
    assert cfgsg.branches(0, steps) == [Branch("main", 0.1, "cond")]
    ag = AutoGuidance(ConstantModel(), 2.0, interval=(0.5, 1.0))
    assert ag.branches(0, steps) == [Branch("main", 0.0, "cond")]
    assert ag.branches(2, steps) == [Branch("main", 0.0, "cond"), Branch("weak", 0.0, "cond")]


def test_interval_in_sampling_evaluates_fallback_only():
    model = ConstantModel()
    noise = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    out = sample(model, noise, torch.tensor([LABEL]), steps=4,
                 guidance=CFG(3.0, interval=(0.4, 1.0)))
    assert [c["batch"] for c in model.calls] == [1, 1, 2, 2]
    # x_1 = Σ_i h·v_i: two unguided steps (D(c) = 4) and two CFG steps (-190)
    assert out.flatten()[0].item() == pytest.approx(0.25 * (4 + 4 - 190 - 190))


def test_repr_leaves_out_the_weak_model():
    weak = torch.nn.Linear(3, 3)               # a module's repr is long: not in sampling.json
    for g in (SparseGuidance(2.0, 0.5, 0.9, weak_model=weak), AutoGuidance(weak, 2.0),
              CFGSparseGuidance(2.0, 1.0, 0.2, 0.7, weak_model=weak)):
        text = repr(g)
        assert "Linear" not in text and "weak_model" not in text
        assert type(g).__name__ in text and "scale" in text
