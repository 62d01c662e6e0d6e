"""Plain eager op calls skip the dispatcher (ops/custom.py) with the same outputs; value checks
and the torch backend's cu_seqlens grouping run once per tensor version (runtime/memo.py)."""
import gc

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sgkernels import ops
from sgkernels.ops import custom
from sgkernels.ops.norm import _rms_norm_modulate
from sgkernels.runtime.memo import TensorMemo


def _inputs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    shift, scale = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    seg = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.int32)
    return x, y, shift, scale, seg


class _Names(TorchDispatchMode):
    """Records the ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_direct_only_for_plain_eager_calls():
    x = torch.randn(3)
    assert custom.direct((x, None, 1.0))
    with torch.no_grad():
        assert custom.direct((x.requires_grad_(),))
    assert not custom.direct((x,))                       # grad mode on, x requires grad
    with torch.no_grad():
        assert custom.direct((torch.nn.Parameter(torch.ones(2)),))
    assert not custom.direct((torch.empty(3, device="meta"),))
    with _Names():
        assert not custom.direct((torch.randn(3),))
    with torch.profiler.profile():
        assert not custom.direct((torch.randn(3),))


def test_direct_and_dispatched_calls_agree():
    x, y, shift, scale, seg = _inputs()
    direct = _rms_norm_modulate(x, None, shift, scale, seg, 1e-6)
    dispatched = _rms_norm_modulate.op(x, None, shift, scale, seg, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(direct, dispatched))
    with _Names() as mode:                               # under a mode: the custom op itself
        ops.gated_residual(x, y, shift, seg)
    assert "sgkernels.gated_residual" in mode.names


def test_value_checks_run_again_after_an_in_place_write():
    x, _, shift, scale, seg = _inputs()
    ops.rms_norm_modulate(x, None, shift, scale, seg)
    seg[-1] = 5                                          # bumps seg._version
    with pytest.raises(ValueError, match="seg values must lie in"):
        ops.rms_norm_modulate(x, None, shift, scale, seg)
    idx = torch.tensor([0, 2])
    ops.route_gather(x, idx)
    idx[1] = 0
    with pytest.raises(ValueError, match="idx must not repeat a row"):
        ops.route_gather(x, idx)


def test_attention_grouping_follows_cu_seqlens_changes():
    q, k, v = (torch.randn(7, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    ops.varlen_attention(q, k, v, cu, 4)
    cu[1] = 1
    fresh = torch.tensor([0, 1, 7], dtype=torch.int32)
    torch.testing.assert_close(ops.varlen_attention(q, k, v, cu, 6),
                               ops.varlen_attention(q, k, v, fresh, 6), rtol=0, atol=0)


def test_tensor_memo_computes_once_per_version_and_lets_tensors_go():
    memo, calls = TensorMemo(), []
    t = torch.zeros(3)

    def compute():
        calls.append(1)
        return len(calls)

    assert memo.get(t, "k", compute) == memo.get(t, "k", compute) == 1
    assert memo.get(t, "other", compute) == 2
    t.add_(1)
    assert memo.get(t, "k", compute) == 3
    with torch.inference_mode():
        frozen = torch.zeros(2)
    assert memo.get(frozen, "k", compute) == 4 and memo.get(frozen, "k", compute) == 5
    del t
    gc.collect()
    assert len(memo._entries) == 0
