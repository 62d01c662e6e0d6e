"""Triton axial RoPE (forward and backward) vs the torch reference backend and direct properties
of the rotation, run by the Triton interpreter on CPU tensors (a GPU test at the end)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import rope
from sgkernels.kernels.triton.launch import INTERPRET as INTERPRETING

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")


def _inputs(tokens, heads, dim, dtype, pos_dtype=torch.int64, grid=16, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, heads, dim, generator=gen).to(device=device, dtype=dtype)
    pos = torch.randint(0, grid, (tokens, 2), generator=gen).to(device=device, dtype=pos_dtype)
    return x, pos


def _check(tokens, heads, dim, dtype, assert_matches, pos_dtype=torch.int64, theta=10000.0,
           grid=16, seed=0):
    x, pos = _inputs(tokens, heads, dim, dtype, pos_dtype, grid, seed)
    assert_matches(rope.rope_axial_fwd(x, pos, theta), reference.rope_axial_fwd(x, pos, theta), "y")
    assert_matches(rope.rope_axial_bwd(x, pos, theta), reference.rope_axial_bwd(x, pos, theta),
                   "dx")


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens, heads, dim, pos_dtype", [(37, 3, 64, torch.int64),
                                                           (21, 2, 72, torch.int32),
                                                           (9, 5, 128, torch.float32)])
def test_matches_reference(tokens, heads, dim, pos_dtype, dtype, poisoned_empty, assert_matches):
    """Several token blocks and head groups (with a partial last group: 3 and 5 heads), padded
    quarter widths (Dh 72: 18 -> 32); outputs start as NaN, so unwritten elements fail."""
    _check(tokens, heads, dim, dtype, assert_matches, pos_dtype)


@pytest.mark.interpret
def test_rotation_by_hand(poisoned_empty):
    """Channel 0 of the row half turns by pos_row·theta⁰, channel h of the column half by pos_col;
    pos (0, 0) leaves x unchanged."""
    x, _ = _inputs(2, 1, 16, torch.float32)
    pos = torch.tensor([[3, 5], [0, 0]])
    y = rope.rope_axial_fwd(x, pos, 100.0)
    for channel, partner, angle in ((0, 4, 3.0), (8, 12, 5.0)):
        x1, x2 = x[0, 0, channel], x[0, 0, partner]
        expected = torch.stack([x1 * math.cos(angle) - x2 * math.sin(angle),
                                x2 * math.cos(angle) + x1 * math.sin(angle)])
        torch.testing.assert_close(y[0, 0, [channel, partner]], expected)
    # Channel 1 rotates at f_1 = 100^(-2/8) = 100^(-1/4).
    angle = 3.0 * 100.0 ** -0.25
    expected = x[0, 0, 1] * math.cos(angle) - x[0, 0, 5] * math.sin(angle)
    torch.testing.assert_close(y[0, 0, 1], expected)
    torch.testing.assert_close(y[1], x[1])


@pytest.mark.interpret
def test_backward_inverts_forward_and_preserves_norms():
    x, pos = _inputs(40, 2, 72, torch.float32, grid=300)
    y = rope.rope_axial_fwd(x, pos, 10000.0)
    torch.testing.assert_close(rope.rope_axial_bwd(y, pos, 10000.0), x, rtol=1e-5, atol=1e-5)
    pairs = lambda t: t.reshape(40, 2, 2, 2, 18).square().sum(3)            # |(x1, x2)|² per pair
    torch.testing.assert_close(pairs(y), pairs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [64, 72])
def test_token_strides_out_and_in_place(dim, dtype):
    """x read with a token stride (heads 1..3 of a [T, 5, Dh] buffer), y written into heads 2..4
    of another buffer (nothing else touched) and in place (out=x): bitwise the contiguous
    result; the backward in place restores x."""
    gen = torch.Generator().manual_seed(dim)
    x_buf = torch.randn(23, 5, dim, generator=gen).to(dtype)
    pos = torch.randint(0, 50, (23, 2), generator=gen, dtype=torch.int32)
    x, before = x_buf[:, 1:4], x_buf.clone()
    want = rope.rope_axial_fwd(x.contiguous(), pos, 100.0)
    out_buf = torch.full((23, 6, dim), float("nan"), dtype=dtype)
    got = rope.rope_axial_fwd(x, pos, 100.0, out=out_buf[:, 2:5])
    assert got.data_ptr() == out_buf[:, 2:5].data_ptr() and torch.equal(got, want)
    assert out_buf[:, [0, 1, 5]].isnan().all() and torch.equal(x_buf, before)
    assert rope.rope_axial_fwd(x, pos, 100.0, out=x) is x and torch.equal(x, want)
    assert torch.equal(x_buf[:, [0, 4]], before[:, [0, 4]])
    rope.rope_axial_bwd(x, pos, 100.0, out=x)
    torch.testing.assert_close(x_buf, before, rtol=2e-3, atol=2e-3)


def test_autotuner_restores_the_output():
    """On a GPU the autotuner times every config on the launch's own tensors: with out=x (the
    attention backward rotates dq, dk in place) each timed run must start from the saved y."""
    tuner = rope._rope_axial._tuner(1 << 20)
    try:
        assert tuner.restore_value == ["Y"]
    finally:
        rope._rope_axial._tuners.pop(1 << 20)


def test_layout_and_out_shape_are_checked():
    x, pos = _inputs(4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="strides"):
        rope.rope_axial_fwd(torch.zeros(2, 4, 16).transpose(0, 1), pos, 100.0)
    with pytest.raises(ValueError, match="shape"):
        rope.rope_axial_fwd(x, pos, 100.0, out=torch.empty(4, 3, 16))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.integers(1, 40), heads=st.integers(1, 4), quarter=st.integers(1, 32),
       theta=st.sampled_from([100.0, 10000.0]), grid=st.sampled_from([2, 64, 1024]))
@pytest.mark.interpret
def test_hypothesis_shapes(tokens, heads, quarter, theta, grid, poisoned_empty, assert_matches):
    _check(tokens, heads, 4 * quarter, torch.float32, assert_matches, theta=theta, grid=grid)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING, reason="needs compiled kernels (TRITON_INTERPRET=0)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 72, 128])
def test_gpu_matches_reference(dtype, dim, assert_matches):
    x, pos = _inputs(1000, 16, dim, dtype, grid=64, device="cuda")
    assert_matches(rope.rope_axial_fwd(x, pos, 10000.0), reference.rope_axial_fwd(x, pos, 10000.0))
    assert_matches(rope.rope_axial_bwd(x, pos, 10000.0), reference.rope_axial_bwd(x, pos, 10000.0))
