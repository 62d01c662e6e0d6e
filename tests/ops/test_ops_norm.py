import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ops_oracle import compare

from sgkernels import ops

DTYPES = [torch.float32, torch.bfloat16]


def torch_rms_norm(x, weight=None, eps=1e-6):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def torch_modulate(x, weight, shift, scale, seg, eps=1e-6):
    seg = seg.long()
    return torch_rms_norm(x, weight, eps) * (1 + scale[seg]) + shift[seg]


def segments(lengths):
    return torch.repeat_interleave(
        torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths)
    ).to(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (2, 3, 17), (4, 1152), (7, 64)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_matches_torch(shape, dtype, with_weight):
    torch.manual_seed(0)
    inputs = {"x": torch.randn(shape) * 3 + 0.5}
    if with_weight:
        inputs["weight"] = torch.randn(shape[-1])
    compare(ops.rms_norm, torch_rms_norm, inputs, dtype, tuple(inputs))


def test_rms_norm_keeps_leading_shape_and_eps():
    x = torch.zeros(2, 3, 4, 8)
    y = ops.rms_norm(x, eps=0.25)
    assert y.shape == x.shape
    x = torch.full((1, 4), 0.5)
    torch.testing.assert_close(ops.rms_norm(x, eps=0.75), x / (0.25 + 0.75) ** 0.5)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (2, 3, 0), (0, 0)])
def test_rms_norm_of_width_zero_is_empty(shape):
    """Rows of no elements: an empty output of x's shape and empty gradients (the backends'
    width-0 contract), not a reshape error."""
    x = torch.zeros(shape, requires_grad=True)
    w = torch.ones(0, requires_grad=True)
    y = ops.rms_norm(x, w)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == (0,)


def test_rms_norm_non_contiguous_input():
    x = torch.randn(6, 10).t()
    torch.testing.assert_close(ops.rms_norm(x), torch_rms_norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths,dim", [([1], 1), ([3, 1, 4], 17), ([2, 0, 5], 8), ([0, 6, 0], 3), ([4, 4], 96)]
)
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_modulate_matches_torch(lengths, dim, dtype, with_weight):
    torch.manual_seed(1)
    tokens, nseg = sum(lengths), len(lengths)
    inputs = {
        "x": torch.randn(tokens, dim) * 2,
        "weight": torch.randn(dim) if with_weight else None,
        "shift": torch.randn(nseg, dim),
        "scale": torch.randn(nseg, dim) * 0.5,
        "seg": segments(lengths),
    }
    diff = ("x", "shift", "scale") + (("weight",) if with_weight else ())
    _, grads = compare(ops.rms_norm_modulate, torch_modulate, inputs, dtype, diff)
    empty = [i for i, n in enumerate(lengths) if n == 0]
    assert torch.all(grads["shift"][empty] == 0) and torch.all(grads["scale"][empty] == 0)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    dim=st.integers(1, 40),
    with_weight=st.booleans(),
)
def test_rms_norm_modulate_hypothesis(lengths, dim, with_weight):
    gen = torch.Generator().manual_seed(len(lengths) * 100 + dim)
    tokens, nseg = sum(lengths), len(lengths)
    inputs = {
        "x": torch.randn(tokens, dim, generator=gen),
        "weight": torch.randn(dim, generator=gen) if with_weight else None,
        "shift": torch.randn(nseg, dim, generator=gen),
        "scale": torch.randn(nseg, dim, generator=gen),
        "seg": segments(lengths),
    }
    diff = ("x", "shift", "scale") + (("weight",) if with_weight else ())
    compare(ops.rms_norm_modulate, torch_modulate, inputs, torch.float32, diff)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 12), dim=st.integers(1, 70), lead=st.integers(1, 3))
def test_rms_norm_hypothesis(rows, dim, lead):
    gen = torch.Generator().manual_seed(rows * 1000 + dim)
    inputs = {"x": torch.randn(lead, rows, dim, generator=gen), "weight": torch.randn(dim, generator=gen)}
    compare(ops.rms_norm, torch_rms_norm, inputs, torch.float32, ("x", "weight"))
