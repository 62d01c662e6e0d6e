"""Triton rms_norm / rms_norm_modulate and the fused route start (norm.py, route_norm.py: forward
and every gradient) vs the torch reference, run by the Triton interpreter on CPU tensors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import norm, route_norm
from sgkernels.kernels.triton.launch import INTERPRET

# `interpret` tests run the kernels in the Triton interpreter on CPU (tests/kernels/conftest.py sets
# TRITON_INTERPRET=1); `gpu` tests run them compiled on CUDA (with TRITON_INTERPRET=0).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _seg(lengths, device="cpu"):
    counts = torch.tensor(lengths, dtype=torch.int64)
    seg = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), counts)
    return seg.to(device)


def _inputs(rows, dim, dtype, segments=1, seed=0, device="cpu"):
    """x, weight, dy, shift, scale (x offset from 0 so that rms_norm's scale matters)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=gen) * 3 + 0.5
    weight = torch.randn(dim, generator=gen)
    dy = torch.randn(rows, dim, generator=gen)
    shift, scale = (torch.randn(segments, dim, generator=gen) for _ in range(2))
    return tuple(t.to(device=device, dtype=dtype) for t in (x, weight, dy, shift, scale))


def _check_rms_norm(rows, dim, dtype, has_weight, eps, assert_matches, device="cpu"):
    x, weight, dy, _, _ = _inputs(rows, dim, dtype, device=device)
    weight = weight if has_weight else None
    y, rstd = norm.rms_norm_fwd(x, weight, eps)
    y_ref, rstd_ref = reference.rms_norm_fwd(x, weight, eps)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    dx, dweight = norm.rms_norm_bwd(dy, x, weight, rstd_ref)
    dx_ref, dweight_ref = reference.rms_norm_bwd(dy, x, weight, rstd_ref)
    assert_matches(dx, dx_ref, "dx")
    if has_weight:
        assert_matches(dweight, dweight_ref, "dweight")
    else:
        assert dweight is None


def _check_modulate(lengths, dim, dtype, has_weight, eps, assert_matches, device="cpu"):
    """Compare forward and backward with the reference; returns the Triton gradients."""
    seg = _seg(lengths, device)
    x, weight, dy, shift, scale = _inputs(seg.shape[0], dim, dtype, segments=len(lengths),
                                          device=device)
    weight = weight if has_weight else None
    y, rstd = norm.rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps)
    y_ref, rstd_ref = reference.rms_norm_modulate_fwd(x, weight, shift, scale, seg, eps)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    grads = norm.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    grads_ref = reference.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
        if want is None:
            assert got is None, name
        else:
            assert_matches(got, want, name)
    return grads


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("rows, dim, eps", [(1, 1, 1e-6), (7, 72, 1e-6), (5, 100, 0.5),
                                            (13, 64, 1e-5)])
def test_rms_norm_matches_reference(rows, dim, eps, dtype, has_weight, poisoned_empty,
                                    assert_matches):
    _check_rms_norm(rows, dim, dtype, has_weight, eps, assert_matches)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("lengths, dim", [([1], 1), ([7], 72), ([3, 1, 4], 100),
                                          ([2, 0, 5], 72), ([1] * 7, 40), ([0, 13], 16)])
def test_rms_norm_modulate_matches_reference(lengths, dim, dtype, has_weight, poisoned_empty,
                                             assert_matches):
    _check_modulate(lengths, dim, dtype, has_weight, 1e-6, assert_matches)


@pytest.mark.interpret
@SETTINGS
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0),
       dim=st.integers(1, 80), has_weight=st.booleans())
def test_modulate_hypothesis_segments(lengths, dim, has_weight, poisoned_empty, assert_matches):
    _check_modulate(lengths, dim, torch.float32, has_weight, 1e-6, assert_matches)


@pytest.mark.interpret
@SETTINGS
@given(rows=st.integers(1, 12), dim=st.integers(1, 80), has_weight=st.booleans())
def test_rms_norm_hypothesis_shapes(rows, dim, has_weight, poisoned_empty, assert_matches):
    _check_rms_norm(rows, dim, torch.float32, has_weight, 1e-6, assert_matches)


@pytest.mark.interpret
def test_weight_gradients_are_deterministic():
    """Bitwise-equal dweight / dshift / dscale on repeated calls (two-stage sums, no atomics)."""
    lengths = [5, 1, 11, 0, 6]
    seg = _seg(lengths)
    x, weight, dy, _, scale = _inputs(seg.shape[0], 40, torch.float32, segments=len(lengths))
    _, rstd = reference.rms_norm_fwd(x, weight, 1e-6)
    first = norm.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd)
    second = norm.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd)
    for got, again in zip(first[1:], second[1:]):
        assert torch.equal(got, again)
    assert torch.equal(norm.rms_norm_bwd(dy, x, weight, rstd)[1],
                       norm.rms_norm_bwd(dy, x, weight, rstd)[1])


def _check_fused(total, lengths, dim, dtype, has_weight, assert_matches, device="cpu"):
    """h, y, rstd and every gradient of the fused route start equal the reference (route_gather
    followed by rms_norm_modulate, dx scattered onto zeros)."""
    seg = _seg(lengths, device)
    kept = seg.shape[0]
    x, weight, _, shift, scale = _inputs(total, dim, dtype, segments=len(lengths), device=device)
    gen = torch.Generator().manual_seed(5)
    idx = torch.randperm(total, generator=gen)[:kept].to(device)
    dy, dh = (torch.randn(kept, dim, generator=gen).to(device, dtype) for _ in range(2))
    weight = weight if has_weight else None
    h, y, rstd = route_norm.route_gather_rms_norm_modulate_fwd(x, idx, weight, shift, scale, seg,
                                                               1e-6)
    h_ref, y_ref, rstd_ref = reference.route_gather_rms_norm_modulate_fwd(x, idx, weight, shift,
                                                                          scale, seg, 1e-6)
    assert torch.equal(h, h_ref)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    args = (dh, dy, h_ref, idx, weight, scale, seg, rstd_ref, total)
    grads = route_norm.route_gather_rms_norm_modulate_bwd(*args)
    grads_ref = reference.route_gather_rms_norm_modulate_bwd(*args)
    for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
        if want is None:
            assert got is None, name
        else:
            assert_matches(got, want, name)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("total, lengths, dim", [(1, [1], 1), (12, [3, 1, 4], 72),
                                                 (9, [2, 0, 5], 100)])
def test_fused_route_gather_modulate_matches_reference(total, lengths, dim, dtype, has_weight,
                                                         poisoned_empty, assert_matches):
    _check_fused(total, lengths, dim, dtype, has_weight, assert_matches)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="kernels were imported for the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_on_gpu(dtype, poisoned_empty, assert_matches):
    """Compiled (autotuned) kernels on CUDA at model widths match the reference, and the weight
    gradients are bitwise equal over repeated calls."""
    _check_rms_norm(300, 2048, dtype, True, 1e-6, assert_matches, device="cuda")
    lengths = [5, 0, 130, 64, 1]
    first = _check_modulate(lengths, 1152, dtype, True, 1e-6, assert_matches, device="cuda")
    again = _check_modulate(lengths, 1152, dtype, True, 1e-6, assert_matches, device="cuda")
    for got, repeat in zip(first[1:], again[1:]):
        assert torch.equal(got, repeat)
    _check_fused(400, lengths, 1152, dtype, True, assert_matches, device="cuda")
