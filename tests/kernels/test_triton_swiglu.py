"""Triton swiglu (forward, da and db written in place) vs the torch reference, run by the Triton
interpreter on CPU tensors; a and b are the two halves of one [M, 2H] tensor or separate."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import swiglu

# `interpret` tests run the kernels in the Triton interpreter on CPU (tests/kernels/conftest.py sets
# TRITON_INTERPRET=1); `gpu` tests run them compiled on CUDA (with TRITON_INTERPRET=0).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _check(rows, hidden, dtype, halves, poison, assert_matches, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ab = (torch.randn(rows, 2 * hidden, generator=gen) * 4).to(dtype)
    a, b = (ab[:, :hidden], ab[:, hidden:]) if halves else (ab[:, :hidden].clone(),
                                                           ab[:, hidden:].clone())
    dout = torch.randn(rows, hidden, generator=gen).to(dtype)
    assert_matches(swiglu.swiglu_fwd(a, b), reference.swiglu_fwd(a, b), "out")
    # Gradients land in the halves of one poisoned buffer that is one column wider than needed:
    # every element of da, db must be written and the spare column never touched.
    grad = poison(torch.empty(rows, 2 * hidden + 1, dtype=dtype))
    want = torch.empty(rows, 2 * hidden, dtype=dtype)
    swiglu.swiglu_bwd(dout, a, b, grad[:, :hidden], grad[:, hidden:2 * hidden])
    reference.swiglu_bwd(dout, a, b, want[:, :hidden], want[:, hidden:])
    assert_matches(grad[:, :hidden], want[:, :hidden], "da")
    assert_matches(grad[:, hidden:2 * hidden], want[:, hidden:], "db")
    assert bool(grad[:, -1].isnan().all()), "swiglu_bwd wrote outside da, db"


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("halves", [True, False])
@pytest.mark.parametrize("rows, hidden", [(1, 1), (7, 72), (5, 100), (3, 40)])
def test_swiglu_matches_reference(rows, hidden, dtype, halves, poison, poisoned_empty,
                                  assert_matches):
    _check(rows, hidden, dtype, halves, poison, assert_matches)


@pytest.mark.interpret
@SETTINGS
@given(rows=st.integers(1, 9), hidden=st.integers(1, 90), halves=st.booleans())
def test_swiglu_hypothesis_shapes(rows, hidden, halves, poison, poisoned_empty, assert_matches):
    _check(rows, hidden, torch.float32, halves, poison, assert_matches)
