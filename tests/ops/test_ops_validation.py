"""Bad inputs raise the documented errors: TypeError for dtypes, ValueError for shapes, devices and
values; each message names the op, the argument and the expectation."""
import pytest
import torch

from sgkernels import ops

f32, bf16 = torch.float32, torch.bfloat16


def x2(t=6, d=8, dtype=f32):
    return torch.randn(t, d, dtype=dtype)


def seg(values=(0, 0, 1, 1, 1, 2)):
    return torch.tensor(values, dtype=torch.int32)


def cu(values):
    return torch.tensor(values, dtype=torch.int32)


def qkv(t=7, h=2, d=8, dtype=f32):
    return [torch.randn(t, h, d, dtype=dtype) for _ in range(3)]


CASES = [
    # rms_norm
    (lambda: ops.rms_norm(x2().long()), TypeError, r"rms_norm: x must have dtype float32 or float16 or bfloat16"),
    (lambda: ops.rms_norm(x2(), torch.ones(8, dtype=bf16)), TypeError, r"rms_norm: weight must have the dtype of x"),
    (lambda: ops.rms_norm(x2(), torch.ones(7)), ValueError, r"rms_norm: weight must have shape \[D\] = \(8,\), got \(7,\)"),
    (lambda: ops.rms_norm(torch.tensor(1.0)), ValueError, r"rms_norm: x must have at least 1 dim"),
    (lambda: ops.rms_norm(x2(), torch.ones(8, device="meta")), ValueError, r"rms_norm: weight must be on the device of x"),
    # rms_norm_modulate
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3), x2(3), seg().long()), TypeError, r"rms_norm_modulate: seg must have dtype int32, got torch.int64"),
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3), x2(2), seg()), ValueError, r"rms_norm_modulate: scale must have shape \[S, D\]"),
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3, 7), x2(3, 7), seg()), ValueError, r"rms_norm_modulate: shift must have shape \[S, D\] = \(3, 8\)"),
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3), x2(3), seg((0, 1, 2))), ValueError, r"rms_norm_modulate: seg must have shape \[T\] = \(6,\)"),
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3), x2(3), seg((0, 0, 1, 1, 1, 3))), ValueError, r"rms_norm_modulate: seg values must lie in \[0, S\) with S = 3"),
    (lambda: ops.rms_norm_modulate(x2(), None, x2(3), x2(3), seg((0, 1, 0, 1, 1, 2))), ValueError, r"rms_norm_modulate: seg must be non-decreasing"),
    (lambda: ops.rms_norm_modulate(x2(dtype=bf16), None, x2(3), x2(3), seg()), TypeError, r"rms_norm_modulate: shift must have the dtype of x \(torch.bfloat16\)"),
    (lambda: ops.rms_norm_modulate(x2()[None], None, x2(3), x2(3), seg()), ValueError, r"rms_norm_modulate: x must be 2-D"),
    # gated_residual
    (lambda: ops.gated_residual(x2(), x2(5), x2(3), seg()), ValueError, r"gated_residual: y must have shape \[T, D\]"),
    (lambda: ops.gated_residual(x2(), x2(), x2(3), seg((0, 0, 0, 0, 0, -1))), ValueError, r"gated_residual: seg values must lie in \[0, S\)"),
    (lambda: ops.gated_residual(x2(), x2(), x2(3, 4), seg()), ValueError, r"gated_residual: gate must have shape \[S, D\]"),
    (lambda: ops.gated_residual(x2(), x2(), x2(3), seg().float()), TypeError, r"gated_residual: seg must have dtype int32"),
    # swiglu
    (lambda: ops.swiglu(x2(6, 7)), ValueError, r"swiglu: with b=None the last dim of a must be even"),
    (lambda: ops.swiglu(x2(), x2(6, 4)), ValueError, r"swiglu: b must have shape of a = \(6, 8\), got \(6, 4\)"),
    (lambda: ops.swiglu(x2(), x2(dtype=bf16)), TypeError, r"swiglu: b must have the dtype of a"),
    (lambda: ops.swiglu(x2().int()), TypeError, r"swiglu: a must have dtype"),
    # routing
    (lambda: ops.route_gather(x2(), torch.tensor([0.0, 1.0])), TypeError, r"route_gather: idx must have dtype int32 or int64"),
    (lambda: ops.route_gather(x2(), torch.tensor([0, 6])), ValueError, r"route_gather: idx values must lie in \[0, 6\), got range \[0, 6\]"),
    (lambda: ops.route_gather(x2(), torch.tensor([[0, 1]])), ValueError, r"route_gather: idx must be 1-D"),
    (lambda: ops.route_scatter(x2(), x2(2), torch.tensor([1, 1])), ValueError, r"route_scatter: idx must not repeat a row"),
    (lambda: ops.route_scatter(x2(), x2(3), torch.tensor([1, 2])), ValueError, r"route_scatter: y must have shape \[K, D\] = \(2, 8\)"),
    (lambda: ops.route_scatter(x2(), x2(2), torch.tensor([-1, 2])), ValueError, r"route_scatter: idx values must lie in \[0, 6\)"),
    # route_gather_rms_norm_modulate (x [6, 8], idx [3], seg [3], S = 2)
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0.0, 1.0, 2.0]), None, x2(2), x2(2), seg((0, 0, 1))), TypeError, r"route_gather_rms_norm_modulate: idx must have dtype int32 or int64"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 2]), None, x2(2), x2(2), seg((0, 0, 1, 1))), ValueError, r"route_gather_rms_norm_modulate: seg must have shape \[K\] = \(3,\)"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 1]), None, x2(2), x2(2), seg((0, 0, 1))), ValueError, r"route_gather_rms_norm_modulate: idx must not repeat a row"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 6]), None, x2(2), x2(2), seg((0, 0, 1))), ValueError, r"route_gather_rms_norm_modulate: idx values must lie in \[0, 6\)"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 2]), None, x2(2), x2(2), seg((0, 0, 2))), ValueError, r"route_gather_rms_norm_modulate: seg values must lie in \[0, S\) with S = 2"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 2]), None, x2(2), x2(2), seg((1, 0, 1))), ValueError, r"route_gather_rms_norm_modulate: seg must be non-decreasing"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 2]), torch.ones(7), x2(2), x2(2), seg((0, 0, 1))), ValueError, r"route_gather_rms_norm_modulate: weight must have shape \[D\] = \(8,\)"),
    (lambda: ops.route_gather_rms_norm_modulate(x2(), torch.tensor([0, 1, 2]), None, x2(2, dtype=bf16), x2(2), seg((0, 0, 1))), TypeError, r"route_gather_rms_norm_modulate: shift must have the dtype of x"),
    (lambda: ops.route_gather_rms_norm_modulate(x2()[None], torch.tensor([0]), None, x2(2), x2(2), seg((0,))), ValueError, r"route_gather_rms_norm_modulate: x must be 2-D"),
    # varlen_attention
    (lambda: ops.varlen_attention(*qkv(), cu([0, 3, 7]).long(), 4), TypeError, r"varlen_attention: cu_seqlens must have dtype int32"),
    (lambda: ops.varlen_attention(*qkv(), cu([1, 3, 7]), 4), ValueError, r"varlen_attention: cu_seqlens must start at 0 and end at T = 7, got 1 \.\.\. 7"),
    (lambda: ops.varlen_attention(*qkv(), cu([0, 3, 6]), 4), ValueError, r"varlen_attention: cu_seqlens must start at 0 and end at T = 7"),
    (lambda: ops.varlen_attention(*qkv(), cu([0, 5, 3, 7]), 5), ValueError, r"varlen_attention: cu_seqlens must be non-decreasing"),
    (lambda: ops.varlen_attention(*qkv(), cu([0, 3, 7]), 3), ValueError, r"varlen_attention: max_seqlen must be >= the longest segment \(4\)"),
    (lambda: ops.varlen_attention(*qkv(), cu([0, 3, 7]), 4.0), ValueError, r"varlen_attention: max_seqlen must be a non-negative int"),
    (lambda: ops.varlen_attention(*qkv()[:2], qkv(d=4)[0], cu([0, 7]), 7), ValueError, r"varlen_attention: v must have shape \[T, H, Dh\]"),
    (lambda: ops.varlen_attention(*qkv()[:2], qkv(dtype=bf16)[0], cu([0, 7]), 7), TypeError, r"varlen_attention: v must have the dtype of q"),
    (lambda: ops.varlen_attention(x2(), x2(), x2(), cu([0, 6]), 6), ValueError, r"varlen_attention: q must be 3-D"),
    # rope_axial
    (lambda: ops.rope_axial(qkv(d=6)[0], torch.zeros(7, 2, dtype=torch.int32)), ValueError, r"rope_axial: x head dim Dh must be divisible by 4, got 6"),
    (lambda: ops.rope_axial(qkv()[0], torch.zeros(7, 3, dtype=torch.int32)), ValueError, r"rope_axial: pos must have shape \[T, 2\] = \(7, 2\)"),
    (lambda: ops.rope_axial(qkv()[0], torch.zeros(7, 2, dtype=bf16)), TypeError, r"rope_axial: pos must have dtype int32, int64 or float32"),
    # not a tensor, also for the ops that first cast to the autocast dtype
    (lambda: ops.rope_axial([1.0], None), TypeError, r"rope_axial: x must be a torch.Tensor, got list"),
    (lambda: ops.swiglu(2.0), TypeError, r"swiglu: a must be a torch.Tensor, got float"),
    (lambda: ops.varlen_attention(None, *qkv()[1:], cu([0, 7]), 7), TypeError, r"varlen_attention: q must be a torch.Tensor"),
    (lambda: ops.varlen_attention_qkv((), cu([0, 7]), 7), TypeError, r"varlen_attention_qkv: qkv must be a torch.Tensor"),
    (lambda: ops.rms_norm(x2(), [1.0] * 8), TypeError, r"rms_norm: weight must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("call,error,message", CASES, ids=[c[2][:50] for c in CASES])
def test_bad_inputs_raise_documented_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_valid_edge_cases_do_not_raise():
    empty_segments = ops.varlen_attention(*qkv(), cu([0, 0, 7, 7]), 7)
    assert empty_segments.shape == (7, 2, 8)
    assert ops.route_gather(x2(), torch.tensor([], dtype=torch.int64)).shape == (0, 8)
    assert ops.rms_norm_modulate(x2(), None, x2(4), x2(4), seg((1, 1, 1, 3, 3, 3))).shape == (6, 8)


def test_value_checks_on_cuda_only_in_debug_mode(monkeypatch):
    from types import SimpleNamespace

    from sgkernels.ops import validate

    cuda_like = SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.delenv("SGKERNELS_DEBUG", raising=False)
    assert validate.wants_values(torch.zeros(1)) and not validate.wants_values(cuda_like)
    monkeypatch.setenv("SGKERNELS_DEBUG", "1")
    assert validate.wants_values(cuda_like)
