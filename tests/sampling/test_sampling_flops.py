"""sampling_gflops / sampling_nfe: every evaluated branch at its own sparsity and model size."""
import math

import pytest

from sgkernels import presets
from sgkernels.flops import forward_gflops, sampling_gflops
from sgkernels.flops.sampling import sampling_nfe
from sgkernels.guidance import (CFG, AutoGuidance, CFGSparseGuidance, Schedule, SparseGuidance,
                                Unguided)

XL = presets.get("SiT-XL/2")


def test_cfg_is_exactly_twice_the_dense_forward():
    assert sampling_gflops(XL, CFG(4.0), 40) == 2 * forward_gflops(XL)
    assert sampling_nfe(CFG(4.0), 40) == 2.0


def test_unguided_and_scale_one_cost_one_forward():
    dense = forward_gflops(XL)
    assert sampling_gflops(XL, None, 40) == dense
    assert sampling_gflops(XL, CFG(1.0), 40) == dense
    assert sampling_gflops(XL, SparseGuidance(1.0, 0.5, 0.9), 40) == forward_gflops(XL, 0.5)
    assert sampling_gflops(XL, Unguided(0.5), 10) == forward_gflops(XL, 0.5)


def test_sg_flops_setting_counts_both_sparse_branches():
    expected = forward_gflops(XL, 0.5) + forward_gflops(XL, 0.9)
    assert sampling_gflops(XL, SparseGuidance.sg_flops(2.0), 40) == pytest.approx(expected)
    # the paper's point: an SG step is cheaper than one dense forward, CFG costs two
    assert expected < forward_gflops(XL)
    speedup = sampling_gflops(XL, CFG(4.0), 40) / expected
    assert speedup == pytest.approx(2.34, abs=0.01)
    assert sampling_nfe(SparseGuidance.sg_flops(2.0), 40) == 2.0


def test_autoguidance_counts_the_weak_model_at_its_own_size():
    small = presets.get("SiT-S/2")
    expected = forward_gflops(XL) + forward_gflops(small)
    assert sampling_gflops(XL, AutoGuidance(small, 2.0), 20) == pytest.approx(expected)


def test_sg_fid_schedules_average_over_steps():
    small, steps = presets.get("SiT-B/2"), 8
    g = SparseGuidance.sg_fid(2.0, small)
    per_step = [forward_gflops(XL, g.gamma_strong(i, steps))
                + forward_gflops(small, g.gamma_weak(i, steps)) for i in range(steps)]
    assert sampling_gflops(XL, g, steps) == pytest.approx(math.fsum(per_step) / steps)


def test_interval_solver_and_rules():
    steps = 10                                    # guided for t_i in [0.5, 1]: steps 5..9
    g = CFG(3.0, interval=(0.5, 1.0))
    assert sampling_nfe(g, steps) == 1.5
    assert sampling_gflops(XL, g, steps) == pytest.approx(1.5 * forward_gflops(XL))
    assert sampling_gflops(XL, g, steps, solver="heun") == pytest.approx(3 * forward_gflops(XL))
    assert sampling_nfe(g, steps, solver="heun") == 3.0
    inner = CFGSparseGuidance(2.0, 0.5, 0.5, 0.9, rule="inner")
    assert sampling_gflops(XL, inner, 4) == pytest.approx(
        2 * forward_gflops(XL, 0.5) + forward_gflops(XL, 0.9))
    assert sampling_gflops(XL, inner, 4, convention="full") == pytest.approx(
        2 * forward_gflops(XL, 0.5, convention="full") + forward_gflops(XL, 0.9, convention="full"))
    sched = SparseGuidance(2.0, 0.0, Schedule.linear(0.0, 0.5))
    assert sampling_nfe(sched, 5) == pytest.approx(9 / 5)   # step 0: both branches dense, merged


def test_errors():
    with pytest.raises(ValueError, match="steps"):
        sampling_gflops(XL, CFG(2.0), 0)
    with pytest.raises(TypeError, match="branches"):
        sampling_gflops(XL, "cfg", 10)
    with pytest.raises(ValueError, match="solver"):
        sampling_nfe(CFG(2.0), 10, solver="rk4")
