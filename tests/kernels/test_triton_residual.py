"""Triton gated_residual (forward, every gradient) vs the torch reference, run by the Triton
interpreter on CPU tensors (compiled on a GPU)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import residual
from sgkernels.kernels.triton.launch import INTERPRET

# `interpret` tests run the kernels in the Triton interpreter on CPU (tests/kernels/conftest.py sets
# TRITON_INTERPRET=1); `gpu` tests run them compiled on CUDA (with TRITON_INTERPRET=0).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SEGMENTS = st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda ls: sum(ls) > 0)


def _seg(lengths):
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), counts)


def _check(lengths, dim, dtype, assert_matches, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seg = _seg(lengths)
    x, y, dout = (torch.randn(seg.shape[0], dim, generator=gen).to(dtype) for _ in range(3))
    gate = torch.randn(len(lengths), dim, generator=gen).to(dtype)
    assert_matches(residual.gated_residual_fwd(x, y, gate, seg),
                   reference.gated_residual_fwd(x, y, gate, seg), "out")
    dx, dy, dgate = residual.gated_residual_bwd(dout, y, gate, seg)
    _, dy_ref, dgate_ref = reference.gated_residual_bwd(dout, y, gate, seg)
    assert dx is dout
    assert_matches(dy, dy_ref, "dy")
    assert_matches(dgate, dgate_ref, "dgate")
    return dgate


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths, dim", [([1], 1), ([7], 72), ([3, 1, 4], 100), ([2, 0, 5], 72),
                                          ([1] * 7, 40), ([13, 0], 16)])
def test_gated_residual_matches_reference(lengths, dim, dtype, poisoned_empty, assert_matches):
    _check(lengths, dim, dtype, assert_matches)


@pytest.mark.interpret
@SETTINGS
@given(lengths=SEGMENTS, dim=st.integers(1, 80))
def test_gated_residual_hypothesis_segments(lengths, dim, poisoned_empty, assert_matches):
    _check(lengths, dim, torch.float32, assert_matches)


@pytest.mark.interpret
def test_dgate_is_deterministic(assert_matches):
    lengths = [9, 1, 0, 14, 3]
    assert torch.equal(_check(lengths, 33, torch.float32, assert_matches),
                       _check(lengths, 33, torch.float32, assert_matches))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="kernels were imported for the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_on_gpu(dtype, poisoned_empty, assert_matches):
    """Compiled kernels on CUDA at SiT-XL width match the reference; dgate is bitwise equal over
    repeated calls."""
    gen = torch.Generator().manual_seed(4)
    lengths = [5, 0, 130, 64, 1]
    seg = _seg(lengths).cuda()
    x, y, dout = (torch.randn(seg.shape[0], 1152, generator=gen).to("cuda", dtype)
                  for _ in range(3))
    gate = torch.randn(len(lengths), 1152, generator=gen).to("cuda", dtype)
    assert_matches(residual.gated_residual_fwd(x, y, gate, seg),
                   reference.gated_residual_fwd(x, y, gate, seg), "out")
    _, dy, dgate = residual.gated_residual_bwd(dout, y, gate, seg)
    _, dy_ref, dgate_ref = reference.gated_residual_bwd(dout, y, gate, seg)
    assert_matches(dy, dy_ref, "dy")
    assert_matches(dgate, dgate_ref, "dgate")
    assert torch.equal(dgate, residual.gated_residual_bwd(dout, y, gate, seg)[2])
