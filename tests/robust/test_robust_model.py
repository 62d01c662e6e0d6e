"""Bad inputs to RoutedDiT.forward: t values, dtypes, label widths (docs/contracts.md, input
policy)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from robust_helpers import random_model, small_config


@pytest.fixture(scope="module")
def model():
    return random_model(small_config())


def _inputs(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g),
            torch.randint(0, 4, (batch,), generator=g))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1.5, -0.01])
def test_t_outside_unit_interval_or_non_finite_is_rejected(model, bad):
    x, t, y = _inputs()
    t[1] = bad
    with pytest.raises(ValueError, match=r"t must be finite and in \[0, 1\].*t\[1\]"):
        model(x, t, y)


@settings(max_examples=30, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_t_accepted_exactly_in_unit_interval(model, value):
    x, t, y = _inputs(batch=2)
    t[0] = value
    if 0.0 <= value <= 1.0:
        assert torch.isfinite(model(x, t, y)).all()
    else:
        with pytest.raises(ValueError, match="t must be finite and in"):
            model(x, t, y)


def test_t_endpoints_are_accepted(model):
    x, _, y = _inputs()
    for value in (0.0, 1.0):
        assert model(x, torch.full((3,), value), y).shape == x.shape


def test_int32_and_int64_labels_give_the_same_output(model):
    x, t, y = _inputs()
    torch.testing.assert_close(model(x, t, y.int()), model(x, t, y), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_x_of_another_dtype_names_the_models_dtype(model, dtype):
    x, t, y = _inputs()
    with pytest.raises(TypeError, match=f"x is {str(dtype)[6:]} but the model's parameters "
                                        f"are float32"):
        model(x.to(dtype), t, y)


def test_x_of_another_dtype_runs_under_autocast(model):
    x, t, y = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16(), t, y).shape == x.shape


def test_float64_model_names_the_supported_dtypes():
    m = random_model(small_config()).double()
    x, t, y = _inputs()
    with pytest.raises(TypeError, match=r"runs in float32, bfloat16, float16.*float64.*"
                                        r"model\.float\(\)"):
        m(x.double(), t.double(), y)


def test_bfloat16_model_runs_on_bfloat16_x():
    m = random_model(small_config()).bfloat16()
    x, t, y = _inputs()
    assert m(x.bfloat16(), t, y).dtype == torch.bfloat16


def test_labels_of_other_integer_widths_are_named(model):
    x, t, y = _inputs()
    with pytest.raises(TypeError, match="int64 or int32"):
        model(x, t, y.to(torch.int16))


def test_debug_checks_x_values(model, monkeypatch):
    x, t, y = _inputs()
    x[2, 0, 3, 3] = math.nan
    assert model(x, t, y)[2].isnan().all()             # without SGKERNELS_DEBUG: not checked
    monkeypatch.setenv("SGKERNELS_DEBUG", "1")
    with pytest.raises(ValueError, match=r"x holds NaN or inf \(first in sample 2\)"):
        model(x, t, y)
