"""sampling_gflops rejects up front the guidance `sample` rejects."""
import pytest
from robust_helpers import small_config

from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, AutoGuidance, CFGSparseGuidance, SparseGuidance, Schedule

UNCONDITIONAL = small_config(num_classes=0)


@pytest.mark.parametrize("guidance", [CFG(2.0), CFG(1.5, gamma=0.5, interval=(0.5, 1.0)),
                                      CFGSparseGuidance(2.0, 1.0, 0.25, 0.75, rule="inner")])
def test_null_branches_on_an_unconditional_config_are_rejected(guidance):
    with pytest.raises(ValueError, match=r"unconditional \(num_classes=0\)"):
        sampling_gflops(UNCONDITIONAL, guidance, 4)


@pytest.mark.parametrize("guidance", [None, SparseGuidance(2.0, 0.25, 0.75),
                                      AutoGuidance(small_config(num_classes=0), 2.0)])
def test_guidance_without_null_branches_counts_on_an_unconditional_config(guidance):
    assert sampling_gflops(UNCONDITIONAL, guidance, 4) > 0


def test_null_branches_count_on_a_conditional_config():
    config = small_config()
    assert sampling_gflops(config, CFG(2.0), 4) == pytest.approx(
        2 * sampling_gflops(config, None, 4))


def test_schedules_that_cross_are_rejected_like_sample_does():
    # endpoints are ordered, the middle is not: only validate(steps) sees it
    sg = SparseGuidance(2.0, Schedule.cosine(0.0, 0.6), Schedule.linear(0.05, 0.65))
    with pytest.raises(ValueError, match="gamma_strong .* must be <= gamma_weak"):
        sampling_gflops(small_config(), sg, 9)


def test_config_must_be_a_model_config():
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        sampling_gflops({"dim": 32}, None, 4)
