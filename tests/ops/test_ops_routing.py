import pytest
import torch
from hypothesis import given, settings, strategies as st
from ops_oracle import compare

from sgkernels import ops

DTYPES = [torch.float32, torch.bfloat16]


def torch_gather(x, idx):
    return x[idx.long()]


def torch_scatter(base, y, idx):
    out = base.clone()
    out[idx.long()] = y
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("rows,dim,keep", [(1, 1, 1), (9, 17, 4), (16, 64, 0), (5, 3, 5)])
def test_route_gather_and_scatter_match_torch(rows, dim, keep, dtype, idx_dtype):
    torch.manual_seed(5)
    idx = torch.randperm(rows)[:keep].to(idx_dtype)
    compare(ops.route_gather, torch_gather, {"x": torch.randn(rows, dim), "idx": idx}, dtype, ("x",))
    inputs = {"base": torch.randn(rows, dim), "y": torch.randn(keep, dim), "idx": idx}
    compare(ops.route_scatter, torch_scatter, inputs, dtype, ("base", "y"))


def test_gather_then_scatter_restores_rows_exactly():
    x = torch.randn(12, 8, dtype=torch.bfloat16)
    idx = torch.tensor([7, 0, 3, 11])
    assert torch.equal(ops.route_scatter(x, ops.route_gather(x, idx), idx), x)
    processed = ops.route_scatter(x, ops.route_gather(x, idx) * 2, idx)
    kept = torch.zeros(12, dtype=torch.bool)
    kept[idx] = True
    assert torch.equal(processed[~kept], x[~kept]) and torch.equal(processed[kept], x[kept] * 2)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 30), dim=st.integers(1, 20), data=st.data())
def test_routing_hypothesis(rows, dim, data):
    keep = data.draw(st.integers(0, rows))
    gen = torch.Generator().manual_seed(rows * 31 + dim)
    idx = torch.randperm(rows, generator=gen)[:keep]
    compare(ops.route_gather, torch_gather, {"x": torch.randn(rows, dim, generator=gen), "idx": idx},
            torch.float32, ("x",))
    inputs = {"base": torch.randn(rows, dim, generator=gen), "y": torch.randn(keep, dim, generator=gen), "idx": idx}
    compare(ops.route_scatter, torch_scatter, inputs, torch.float32, ("base", "y"))
