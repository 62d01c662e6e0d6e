"""Bad inputs to `sample`: non-finite noise, dtypes, label widths, guidance the model cannot
run (all rejected before the first model evaluation), and samples that become non-finite."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_helpers import CountingModel, random_model, small_config

from sgkernels import sample
from sgkernels.guidance import CFG, AutoGuidance, CFGSparseGuidance, SparseGuidance


@pytest.fixture(scope="module")
def model():
    return random_model(small_config())


def _noise(batch=3, dtype=torch.float32, seed=1):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_noise_is_rejected_up_front(bad):
    counting = CountingModel(size=8)
    noise = _noise(4)
    noise[2, 0, 5, 1] = bad
    with pytest.raises(ValueError, match=r"noise holds NaN or inf in image 2 \(1 of 4 images\)"):
        sample(counting, noise, torch.zeros(4, dtype=torch.int64), steps=3)
    assert counting.calls == 0


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 3), st.integers(0, 63), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_any_non_finite_pixel_names_its_image(image, pixel, bad):
    noise = _noise(4)
    noise.view(4, -1)[image, pixel] = bad
    with pytest.raises(ValueError, match=f"in image {image} "):
        sample(CountingModel(size=8), noise, torch.zeros(4, dtype=torch.int64), steps=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_noise_of_another_dtype_is_cast_to_the_models(model, dtype):
    labels = torch.tensor([0, 1, 2])
    ref = sample(model, _noise(), labels, steps=2)
    out = sample(model, _noise(dtype=dtype), labels, steps=2)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    tol = {torch.float64: 1e-5, torch.bfloat16: 0.05, torch.float16: 0.01}[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_float64_model_fails_up_front_naming_the_supported_dtypes():
    m = random_model(small_config()).double()
    with pytest.raises(TypeError, match=r"runs in float32, bfloat16, float16.*float64"):
        sample(m, _noise(dtype=torch.float64), torch.tensor([0, 1, 2]), steps=1)


def test_int32_labels_give_the_int64_samples(model):
    labels = torch.tensor([0, 3, 4])                    # 4 = the null class
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    sg = SparseGuidance(2.0, 0.25, 0.75)
    a = sample(model, _noise(), labels, steps=2, guidance=sg, generator=g[0])
    b = sample(model, _noise(), labels.int(), steps=2, guidance=sg, generator=g[1])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("labels, err, match", [
    (torch.tensor([0, 5, 1]), ValueError, r"labels must be in \[0, 4\].*\[0, 5\]"),
    (torch.tensor([-1, 0, 1]), ValueError, r"labels must be in \[0, 4\]"),
    (torch.tensor([0, 1, 2], dtype=torch.int16), TypeError, "int64 or int32"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "int64 or int32"),
    (torch.tensor([0, 1]), ValueError, r"labels must be \[B\] = \[3\]"),
])
def test_bad_labels_fail_before_any_evaluation(labels, err, match):
    counting = CountingModel(size=8)
    with pytest.raises(err, match=match):
        sample(counting, _noise(), labels, steps=2)
    assert counting.calls == 0


@pytest.mark.parametrize("guidance", [CFG(2.0), CFG(2.0, interval=(0.5, 1.0)),
                                      CFGSparseGuidance(2.0, 1.0, 0.25, 0.75)])
def test_null_branches_on_an_unconditional_model_fail_before_any_evaluation(guidance):
    counting = CountingModel(num_classes=0, size=8)
    # with the interval, step 0 is unguided: the null branch first appears at step 2 of 4
    with pytest.raises(ValueError, match="unconditional"):
        sample(counting, _noise(), None, steps=4, guidance=guidance)
    assert counting.calls == 0


def test_noise_of_another_shape_fails_up_front(model):
    with pytest.raises(ValueError, match=r"noise must be \[B, 1, 8, 8\]"):
        sample(model, torch.randn(2, 1, 6, 6), torch.tensor([0, 1]), steps=1)


def test_weak_model_of_another_kind_fails_up_front(model):
    weak = random_model(small_config(num_classes=7))
    with pytest.raises(ValueError, match=r"weak_model does not match.*num_classes is 7"):
        sample(model, _noise(), torch.tensor([0, 1, 2]), steps=1,
               guidance=AutoGuidance(weak, 2.0))


class _BlowsUp(CountingModel):
    """v = 0, except image 1 gets inf from the evaluation at t >= 0.5 on."""

    def __call__(self, x, t, y, **kwargs):
        v = super().__call__(x, t, y, **kwargs)
        if float(t[0]) >= 0.5:
            v[1] = math.inf
        return v


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_samples_that_become_non_finite_name_image_and_step(solver):
    # Heun's corrector at t_{i+1} = 0.5 already poisons step 1; Euler first sees t = 0.5 at step 2
    step = {"euler": 2, "heun": 1}[solver]
    with pytest.raises(FloatingPointError,
                       match=fr"image 1 became NaN or inf at step {step} of 4 .*1 of 3 images"):
        sample(_BlowsUp(size=8), _noise(), torch.zeros(3, dtype=torch.int64), steps=4,
               solver=solver)
