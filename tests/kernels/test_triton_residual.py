"""Triton gated_residual (forward, every gradient) and the deterministic segment reduction it
shares with the norms, vs the torch reference, run by the Triton interpreter on CPU tensors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sgkernels.ops as ops
from sgkernels.kernels.triton import residual
from sgkernels.ops import reference

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


@settings(max_examples=10, deadline=None)
@given(lengths=SEGMENTS, rows=st.integers(1, 5))
def test_segment_plan_covers_each_segment_once(lengths, rows):
    """Every row lies in exactly one item, items never cross a segment, hold ≤ `rows` rows,
    and the items of segment s are exactly [first[s], last[s])."""
    seg = _seg(lengths)
    plan = residual.segment_plan(seg, len(lengths), rows)
    start, end, item_seg = plan["start"].long(), plan["end"].long(), plan["seg"].long()
    assert start.shape[0] == -(-seg.shape[0] // rows) + len(lengths)
    assert bool(((end - start) <= rows).all()) and bool((end >= start).all())
    covered = torch.zeros(seg.shape[0], dtype=torch.int64)
    for i in range(start.shape[0]):
        covered[start[i]:end[i]] += 1
        assert bool((seg[start[i]:end[i]] == item_seg[i]).all())
    assert bool((covered == 1).all())
    for s in range(len(lengths)):
        items = torch.arange(plan["first"][s], plan["last"][s])
        assert int((end[items] - start[items]).sum()) == lengths[s]
        assert torch.equal(((item_seg == s) & (end > start)).nonzero().flatten(), items)


@pytest.mark.interpret
def test_segment_sum_adds_the_items_of_each_segment(poisoned_empty):
    partials = torch.randn(7, 20)
    first = torch.tensor([0, 3, 3, 6], dtype=torch.int32)
    last = torch.tensor([3, 3, 6, 7], dtype=torch.int32)
    out = residual.segment_sum(partials, first, last, torch.float32)
    want = torch.stack([partials[0:3].sum(0), torch.zeros(20), partials[3:6].sum(0), partials[6]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(residual.column_sum(partials, torch.float16),
                               partials.sum(0).half())


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_public_op_with_triton_backend(dtype, assert_matches):
    gen = torch.Generator().manual_seed(3)
    seg = _seg([2, 1, 6])
    x, y, dout = (torch.randn(9, 24, generator=gen).to(dtype) for _ in range(3))
    gate = torch.randn(3, 24, generator=gen).to(dtype)
    results = {}
    for backend in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, y, gate)]
        with ops.use_backend(backend):
            out = ops.gated_residual(*leaves, seg)
            out.backward(dout)
        results[backend] = [out.detach()] + [t.grad for t in leaves]
    for i, (got, want) in enumerate(zip(results["triton"], results["torch"])):
        assert_matches(got, want, f"output/grad {i}")


@pytest.mark.gpu
@pytest.mark.skipif(residual.INTERPRET, reason="kernels were imported for the interpreter")
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
