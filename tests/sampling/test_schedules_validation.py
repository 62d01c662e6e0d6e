"""Gamma schedules and argument validation of the guidance objects."""
import math

import pytest
import torch

from sampling_fakes import ConstantModel

from sgkernels import presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import (CFG, AutoGuidance, CFGSparseGuidance, Schedule, SparseGuidance,
                                Unguided)
from sgkernels.sampling import sample


def values(schedule, steps):
    return [schedule(i, steps) for i in range(steps)]


def test_schedule_values():
    assert values(Schedule.constant(0.3), 3) == [0.3, 0.3, 0.3]
    assert values(Schedule.linear(0.6, 0.0), 5) == pytest.approx([0.6, 0.45, 0.3, 0.15, 0.0])
    cos = values(Schedule.cosine(0.6, 0.0), 5)
    assert cos == pytest.approx([0.6, 0.3 * (1 + math.cos(math.pi / 4)), 0.3,
                                 0.3 * (1 - math.cos(math.pi / 4)), 0.0])
    assert values(Schedule.cosine(0.2, 0.8), 1) == [0.2]      # a single step uses the start


def test_schedule_parse():
    assert Schedule.parse("0.25") == Schedule.constant(0.25)
    assert Schedule.parse("cosine:0.6:0") == Schedule.cosine(0.6, 0.0)
    assert Schedule.parse("linear:0.1:0.9") == Schedule.linear(0.1, 0.9)
    for bad in ("cos:0.6:0", "linear:0.1", "fast", "linear:a:b"):
        with pytest.raises(ValueError, match="cannot parse schedule"):
            Schedule.parse(bad)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        Schedule("exp", 0.1, 0.2)
    with pytest.raises(TypeError, match="start"):
        Schedule.linear("0.1", 0.2)
    with pytest.raises(ValueError, match="finite"):
        Schedule.linear(float("nan"), 0.2)


def test_gamma_schedules_drive_the_branches():
    steps = 5
    g = SparseGuidance(2.0, Schedule.linear(0.0, 0.4), Schedule.cosine(0.9, 0.5))
    for i in range(steps):
        strong, weak = (b.gamma for b in g.branches(i, steps))
        assert strong == pytest.approx(0.1 * i)
        assert weak == pytest.approx(0.5 + 0.2 * (1 + math.cos(math.pi * i / 4)))
    assert Unguided(Schedule.linear(0.0, 0.5)).branches(4, 5)[0].gamma == 0.5
    assert CFG(2.0, gamma=Schedule.linear(0.5, 0.0)).branches(0, 5)[0].gamma == 0.5


def test_sg_fid_paper_setting():
    weak = ConstantModel()
    g = SparseGuidance.sg_fid(2.0, weak)
    steps = 9
    for i in range(steps):
        (s, sc), (w, wc) = g.terms(i, steps)
        assert (s.model, w.model) == ("main", "weak")
        assert s.gamma + w.gamma == pytest.approx(0.6)       # γ_strong is γ_weak's inverse
        assert (sc, wc) == (2.0, -1.0)
    assert [b.gamma for b in g.branches(0, steps)] == [0.0, 0.6]
    assert [b.gamma for b in g.branches(steps - 1, steps)] == pytest.approx([0.6, 0.0])
    assert g.weak_model is weak


@pytest.mark.parametrize("make, error, match", [
    (lambda: SparseGuidance(2.0, 0.5, 1.0), ValueError, "gamma_weak must be in"),
    (lambda: SparseGuidance(2.0, -0.1, 0.5), ValueError, "gamma_strong must be in"),
    (lambda: SparseGuidance(2.0, "0.5", 0.9), TypeError, "gamma_strong must be a float"),
    (lambda: SparseGuidance(2.0, 0.9, 0.5), ValueError, "allow_inverted"),
    (lambda: SparseGuidance(-1.0, 0.5, 0.9), ValueError, "scale must be"),
    (lambda: SparseGuidance(float("inf"), 0.5, 0.9), ValueError, "scale must be"),
    (lambda: SparseGuidance(True, 0.5, 0.9), TypeError, "scale must be"),
    (lambda: SparseGuidance(2.0, Schedule.linear(0.0, 1.0), 0.9), ValueError, "every step"),
    (lambda: CFG(2.0, interval=(0.8, 0.2)), ValueError, "t_lo <= t_hi"),
    (lambda: CFG(2.0, interval=0.5), TypeError, "interval"),
    (lambda: CFG(-0.5), ValueError, "scale must be"),
    (lambda: CFGSparseGuidance(2.0, 1.0, 0.5, 0.9, rule="outer"), ValueError, "rule must be"),
    (lambda: CFGSparseGuidance(-2.0, 1.0, 0.5, 0.9), ValueError, "cfg_scale"),
    (lambda: CFGSparseGuidance(2.0, -1.0, 0.5, 0.9), ValueError, "sg_scale"),
    (lambda: CFGSparseGuidance(2.0, 1.0, 0.6, 0.4), ValueError, "allow_inverted"),
    (lambda: AutoGuidance(None, 2.0), ValueError, "weak_model"),
    (lambda: SparseGuidance.sg_fid(2.0, None), ValueError, "weak_model"),
])
def test_invalid_arguments_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_inverted_gammas_allowed_explicitly():
    g = SparseGuidance(2.0, 0.9, 0.5, allow_inverted=True)
    assert [b.gamma for b in g.branches(0, 1)] == [0.9, 0.5]


def test_inversion_between_schedule_endpoints_is_caught_up_front():
    # equal at both ends, but the cosine falls faster than the line in the middle
    g = SparseGuidance(2.0, Schedule.linear(0.0, 0.5), Schedule.cosine(0.0, 0.5))
    with pytest.raises(ValueError, match="gamma_strong .* at step 1 of 5"):
        g.branches(0, 5)                       # step 0 is fine, step 1 is not: fail at once
    with pytest.raises(ValueError, match="gamma_strong"):
        g.validate(5)
    g.validate(2)                              # two steps hit only the (valid) endpoints
    inside = SparseGuidance(2.0, Schedule.linear(0.0, 0.5), Schedule.cosine(0.0, 0.5),
                            interval=(0.7, 1.0))
    inside.validate(5)                         # the crossing steps are unguided


def test_sample_rejects_crossing_schedules_before_any_evaluation():
    model = ConstantModel()
    g = CFGSparseGuidance(2.0, 1.0, Schedule.cosine(0.0, 0.5), Schedule.linear(0.0, 0.5))
    with pytest.raises(ValueError, match="gamma_strong"):
        sample(model, torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), steps=5,
               guidance=g)
    assert model.calls == []


def test_sampling_gflops_rejects_crossing_schedules():
    g = SparseGuidance(2.0, Schedule.cosine(0.0, 0.5), Schedule.linear(0.0, 0.5))
    with pytest.raises(ValueError, match="gamma_strong"):
        sampling_gflops(presets.get("Tiny/2"), g, 5)


def test_step_arguments_are_checked():
    g = CFG(2.0)
    with pytest.raises(ValueError, match="step must be"):
        g.branches(5, 5)
    with pytest.raises(ValueError, match="steps must be"):
        g.branches(0, 0)


def test_guidance_objects_are_immutable():
    import dataclasses
    g = SparseGuidance(2.0, 0.5, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.scale = -1.0                      # would bypass validation
    assert g == SparseGuidance(2.0, Schedule.constant(0.5), 0.9)
