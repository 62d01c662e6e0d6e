import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ops_oracle import compare
from test_ops_norm import segments

from sgkernels import ops

DTYPES = [torch.float32, torch.bfloat16]


def torch_gated_residual(x, y, gate, seg):
    return x + gate[seg.long()] * y


def torch_swiglu(a, b=None):
    if b is None:
        a, b = a.chunk(2, dim=-1)
    return F.silu(a) * b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths,dim", [([1], 1), ([3, 0, 4], 17), ([5, 2], 64), ([0, 3], 3)])
def test_gated_residual_matches_torch(lengths, dim, dtype):
    torch.manual_seed(2)
    tokens = sum(lengths)
    inputs = {
        "x": torch.randn(tokens, dim),
        "y": torch.randn(tokens, dim),
        "gate": torch.randn(len(lengths), dim),
        "seg": segments(lengths),
    }
    _, grads = compare(ops.gated_residual, torch_gated_residual, inputs, dtype, ("x", "y", "gate"))
    empty = [i for i, n in enumerate(lengths) if n == 0]
    assert torch.all(grads["gate"][empty] == 0)


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 8), min_size=1, max_size=6), dim=st.integers(1, 33))
def test_gated_residual_hypothesis(lengths, dim):
    gen = torch.Generator().manual_seed(dim)
    tokens = sum(lengths)
    inputs = {
        "x": torch.randn(tokens, dim, generator=gen),
        "y": torch.randn(tokens, dim, generator=gen),
        "gate": torch.randn(len(lengths), dim, generator=gen),
        "seg": segments(lengths),
    }
    compare(ops.gated_residual, torch_gated_residual, inputs, torch.float32, ("x", "y", "gate"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 5, 64), (4, 344)])
def test_swiglu_two_inputs_matches_torch(shape, dtype):
    torch.manual_seed(3)
    inputs = {"a": torch.randn(shape) * 3, "b": torch.randn(shape)}
    compare(ops.swiglu, torch_swiglu, inputs, dtype, ("a", "b"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (3, 34), (2, 5, 128), (4, 688)])
def test_swiglu_packed_matches_torch(shape, dtype):
    torch.manual_seed(4)
    compare(ops.swiglu, torch_swiglu, {"a": torch.randn(shape) * 3}, dtype, ("a",))


def test_swiglu_packed_passes_halves_as_views(monkeypatch):
    """b=None: the backend sees strided halves of a and fills the halves of one [M, 2H] grad."""
    from sgkernels.kernels import torch as reference

    seen, swiglu_fwd, swiglu_bwd = {}, reference.swiglu_fwd, reference.swiglu_bwd

    def fwd(a, b):
        seen["fwd"] = (a.data_ptr(), b.data_ptr(), a.stride(), b.stride())
        return swiglu_fwd(a, b)

    def bwd(dout, a, b, da, db):
        seen["bwd"] = (da.untyped_storage().data_ptr(), db.untyped_storage().data_ptr(), da.stride())
        swiglu_bwd(dout, a, b, da, db)

    monkeypatch.setattr(reference, "swiglu_fwd", fwd)
    monkeypatch.setattr(reference, "swiglu_bwd", bwd)
    a = torch.randn(6, 8, requires_grad=True)
    ops.swiglu(a).sum().backward()
    assert seen["fwd"] == (a.data_ptr(), a.data_ptr() + 4 * a.element_size(), (8, 1), (8, 1))
    assert seen["bwd"][0] == seen["bwd"][1] and seen["bwd"][2] == (8, 1)
    torch.testing.assert_close(a.grad, torch.func.grad(lambda t: torch_swiglu(t).sum())(a.detach()))


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 9), hidden=st.integers(1, 40), packed=st.booleans())
def test_swiglu_hypothesis(rows, hidden, packed):
    gen = torch.Generator().manual_seed(rows * 100 + hidden)
    if packed:
        inputs, diff = {"a": torch.randn(rows, 2 * hidden, generator=gen) * 4}, ("a",)
    else:
        inputs = {"a": torch.randn(rows, hidden, generator=gen) * 4, "b": torch.randn(rows, hidden, generator=gen)}
        diff = ("a", "b")
    compare(ops.swiglu, torch_swiglu, inputs, torch.float32, diff)
