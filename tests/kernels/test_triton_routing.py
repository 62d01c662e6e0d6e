"""Triton route_gather / route_scatter (forward and backward) vs the torch reference, run by the
Triton interpreter on CPU tensors. Routing only moves rows, so results must be exact."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import routing

# `interpret` tests run the kernels in the Triton interpreter on CPU (tests/kernels/conftest.py sets
# TRITON_INTERPRET=1); `gpu` tests run them compiled on CUDA (with TRITON_INTERPRET=0).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _check(total, kept, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=gen)[:kept]
    x, dout = (torch.randn(total, dim, generator=gen).to(dtype) for _ in range(2))
    y = torch.randn(kept, dim, generator=gen).to(dtype)
    assert torch.equal(routing.route_gather_fwd(x, idx), reference.route_gather_fwd(x, idx))
    assert torch.equal(routing.route_scatter_fwd(x, y, idx), reference.route_scatter_fwd(x, y, idx))
    grads = routing.route_scatter_bwd(dout, idx)
    for got, want in zip(grads, reference.route_scatter_bwd(dout, idx)):
        assert torch.equal(got, want)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("total, kept, dim", [(1, 1, 1), (7, 3, 72), (9, 9, 100), (13, 1, 40)])
def test_routing_matches_reference(total, kept, dim, dtype, poisoned_empty):
    _check(total, kept, dim, dtype)


@pytest.mark.interpret
@SETTINGS
@given(data=st.data(), total=st.integers(1, 20), dim=st.integers(1, 80))
def test_routing_hypothesis_shapes(data, total, dim, poisoned_empty):
    _check(total, data.draw(st.integers(1, total)), dim, torch.float32,
           seed=data.draw(st.integers(0, 1000)))
