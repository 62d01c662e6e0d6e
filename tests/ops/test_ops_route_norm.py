"""route_gather_rms_norm_modulate (the fused route start) equals route_gather followed by
rms_norm_modulate in both outputs and every gradient, and is accurate against an fp64 oracle."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ops_oracle import compare

from sgkernels import ops


def segments(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                   torch.tensor(lengths)).to(torch.int32)


def _inputs(total, lengths, dim, with_weight, seed=0, idx_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    kept = sum(lengths)
    return {
        "x": torch.randn(total, dim, generator=gen) * 2 + 0.3,
        "idx": torch.randperm(total, generator=gen)[:kept].to(idx_dtype),
        "weight": torch.randn(dim, generator=gen) if with_weight else None,
        "shift": torch.randn(len(lengths), dim, generator=gen),
        "scale": torch.randn(len(lengths), dim, generator=gen) * 0.5,
        "seg": segments(lengths),
    }


def _unfused(x, idx, weight, shift, scale, seg):
    h = ops.route_gather(x, idx)
    return h, ops.rms_norm_modulate(h, weight, shift, scale, seg)


def _run(fn, inputs, dtype, grads_out):
    leaves = {k: (v.detach().to(dtype).clone().requires_grad_()
                  if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in inputs.items()}
    outs = fn(**leaves)
    torch.autograd.backward(outs, grads_out)
    grads = {k: v.grad for k, v in leaves.items() if torch.is_tensor(v) and v.requires_grad}
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("total,lengths,dim", [(1, [1], 1), (12, [3, 1, 4], 17), (9, [2, 0, 5], 8),
                                               (6, [0, 6], 40)])
def test_matches_unfused_public_ops(total, lengths, dim, idx_dtype, with_weight, dtype):
    inputs = _inputs(total, lengths, dim, with_weight, idx_dtype=idx_dtype)
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(sum(lengths), dim, generator=gen).to(dtype) for _ in range(2)]
    fused, fused_grads = _run(ops.route_gather_rms_norm_modulate, inputs, dtype, grads_out)
    plain, plain_grads = _run(_unfused, inputs, dtype, grads_out)
    assert torch.equal(fused[0], plain[0])  # h is a copy of rows
    torch.testing.assert_close(fused[1], plain[1])
    assert fused_grads.keys() == plain_grads.keys() == {"x", "shift", "scale"} | (
        {"weight"} if with_weight else set())
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], msg=lambda m: f"d{name}: {m}")


def test_gradient_reaches_x_through_both_outputs():
    """dx is dh at the kept rows when y gets no gradient, the norm's gradient alone when h gets
    none, and zero on the rows that were not kept."""
    inputs = _inputs(10, [2, 3], 6, True)
    idx = inputs["idx"]
    dh = torch.randn(5, 6)
    only_h = _run(ops.route_gather_rms_norm_modulate, inputs, torch.float32,
                  [dh, torch.zeros(5, 6)])[1]["x"]
    assert torch.equal(only_h[idx], dh)
    dropped = torch.ones(10, dtype=torch.bool)
    dropped[idx] = False
    assert torch.equal(only_h[dropped], torch.zeros(5, 6))
    dy = torch.randn(5, 6)
    only_y = _run(ops.route_gather_rms_norm_modulate, inputs, torch.float32,
                  [torch.zeros(5, 6), dy])[1]["x"]
    both = _run(ops.route_gather_rms_norm_modulate, inputs, torch.float32, [dh, dy])[1]["x"]
    torch.testing.assert_close(both, only_h + only_y)
    assert not torch.equal(only_y[idx], torch.zeros(5, 6))


def torch_route_start(x, idx, weight, shift, scale, seg):
    """Plain torch: both outputs stacked into one tensor for the fp64 oracle."""
    h = x[idx.long()]
    y = F.rms_norm(h, (h.shape[-1],), weight, 1e-6) * (1 + scale[seg.long()]) + shift[seg.long()]
    return torch.cat([h, y])


def op_route_start(**inputs):
    return torch.cat(ops.route_gather_rms_norm_modulate(**inputs))


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4), extra=st.integers(0, 5),
       dim=st.integers(1, 40), with_weight=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_accuracy_against_fp64_oracle(lengths, extra, dim, with_weight, dtype):
    inputs = _inputs(sum(lengths) + extra, lengths, dim, with_weight, seed=dim)
    diff = ("x", "shift", "scale") + (("weight",) if with_weight else ())
    compare(op_route_start, torch_route_start, inputs, dtype, diff)
