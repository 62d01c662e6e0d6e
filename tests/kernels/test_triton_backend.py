"""Every public op forced to the Triton backend (`use_backend("triton")`) matches the torch backend
in its outputs and every gradient, and together the ops reach every backend function that
sgkernels.kernels.triton exports (run by the Triton interpreter on CPU tensors)."""
import functools

import pytest
import torch

import sgkernels.kernels.triton as triton_backend
from sgkernels import ops
from sgkernels.kernels import torch as reference

pytestmark = [pytest.mark.interpret,
              pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")]

# The backend functions of docs/contracts.md: every *_fwd / *_bwd of the reference backend.
BACKEND_FUNCTIONS = sorted(n for n in dir(reference)
                           if n.endswith(("_fwd", "_bwd")) and not n.startswith("_"))


def _seg(lengths):
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), counts)


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _route_round_trip(x, idx):
    return (ops.route_scatter(x, ops.route_gather(x, idx) * 2.0, idx),)


def _unfused_route_start(x, w, shift, scale, idx, seg):
    h = ops.route_gather(x, idx)
    return h, ops.rms_norm_modulate(h, w, shift, scale, seg)


ROPE_POS = torch.randint(0, 9, (19, 2), generator=torch.Generator().manual_seed(0))

# name -> (fn(*float leaves) -> tuple of outputs, shapes of the float leaves, backend functions
# the forward and backward must call)
CASES = {
    "rms_norm": (lambda x, w: (ops.rms_norm(x, w, eps=1e-5),), [(2, 5, 24), (24,)],
                 {"rms_norm_fwd", "rms_norm_bwd"}),
    "rms_norm_modulate": (lambda x, w, sh, sc: (ops.rms_norm_modulate(x, w, sh, sc,
                                                                      _seg([4, 1, 5])),),
                          [(10, 24), (24,), (3, 24), (3, 24)],
                          {"rms_norm_modulate_fwd", "rms_norm_modulate_bwd"}),
    "gated_residual": (lambda x, y, g: (ops.gated_residual(x, y, g, _seg([2, 1, 6])),),
                       [(9, 24), (9, 24), (3, 24)], {"gated_residual_fwd", "gated_residual_bwd"}),
    "swiglu": (lambda a, b: (ops.swiglu(a, b),), [(6, 20), (6, 20)],
               {"swiglu_fwd", "swiglu_bwd"}),
    "swiglu_packed": (lambda ab: (ops.swiglu(ab),), [(2, 3, 40)], {"swiglu_fwd", "swiglu_bwd"}),
    "route_gather_scatter": (lambda x: _route_round_trip(x, torch.tensor([9, 0, 4, 5, 10],
                                                                         dtype=torch.int32)),
                             [(11, 16)],
                             {"route_gather_fwd", "route_scatter_fwd", "route_scatter_bwd"}),
    "route_gather_rms_norm_modulate": (
        lambda x, w, sh, sc: ops.route_gather_rms_norm_modulate(
            x, torch.tensor([3, 11, 0, 7, 5, 8, 1], dtype=torch.int32), w, sh, sc,
            _seg([3, 0, 4])),
        [(12, 24), (24,), (3, 24), (3, 24)],
        {"route_gather_rms_norm_modulate_fwd", "route_gather_rms_norm_modulate_bwd"}),
    "varlen_attention": (lambda q, k, v: (ops.varlen_attention(q, k, v, _cu([9, 0, 26]), 26),),
                         [(35, 2, 72)] * 3, {"varlen_attention_fwd", "varlen_attention_bwd"}),
    "rope_axial": (lambda x: (ops.rope_axial(x, ROPE_POS, theta=500.0),), [(19, 2, 72)],
                   {"rope_axial_fwd", "rope_axial_bwd"}),
}


def _run(fn, inputs, grads_out, backend):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with ops.use_backend(backend):
        outs = fn(*leaves)
        torch.autograd.backward(outs, grads_out)
    return [o.detach() for o in outs], [t.grad for t in leaves]


@pytest.fixture
def triton_calls(monkeypatch):
    """Names of the Triton backend functions called while the test runs."""
    calls = set()

    def recording(name, fn):
        @functools.wraps(fn)
        def call(*args):
            calls.add(name)
            return fn(*args)
        return call

    for name in BACKEND_FUNCTIONS:
        monkeypatch.setattr(triton_backend, name, recording(name, getattr(triton_backend, name)))
    return calls


def test_cases_cover_every_backend_function():
    assert set().union(*(case[2] for case in CASES.values())) == set(BACKEND_FUNCTIONS)
    assert set(triton_backend.__all__) == set(BACKEND_FUNCTIONS) | {"static_specs"}
    assert all(callable(getattr(triton_backend, name)) for name in BACKEND_FUNCTIONS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_public_op_with_triton_backend(case, dtype, triton_calls, assert_matches):
    fn, shapes, expected_calls = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    inputs = [(torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype) for shape in shapes]
    with torch.no_grad():
        probe = fn(*inputs)
    grads_out = [torch.randn(o.shape, generator=gen).to(dtype) for o in probe]
    triton_calls.clear()
    outs, grads = _run(fn, inputs, grads_out, "triton")
    assert triton_calls == expected_calls
    want_outs, want_grads = _run(fn, inputs, grads_out, "torch")
    for i, (got, want) in enumerate(zip(outs + grads, want_outs + want_grads)):
        assert_matches(got, want, f"{case} output/grad {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_route_start_equals_unfused_triton_ops(dtype, assert_matches):
    """route_gather_rms_norm_modulate equals route_gather then rms_norm_modulate, both on the
    Triton backend, in h, y and the gradients of x, weight, shift and scale."""
    gen = torch.Generator().manual_seed(7)
    idx, seg = torch.tensor([2, 9, 4, 0, 6, 1]), _seg([2, 0, 4])
    inputs = [torch.randn(shape, generator=gen).to(dtype) for shape in [(10, 40), (40,), (3, 40),
                                                                        (3, 40)]]
    grads_out = [torch.randn(6, 40, generator=gen).to(dtype) for _ in range(2)]
    fused = _run(lambda x, w, sh, sc: ops.route_gather_rms_norm_modulate(x, idx, w, sh, sc, seg),
                 inputs, grads_out, "triton")
    unfused = _run(lambda *leaves: _unfused_route_start(*leaves, idx, seg), inputs, grads_out,
                   "triton")
    assert torch.equal(fused[0][0], unfused[0][0])
    names = ["y", "dx", "dweight", "dshift", "dscale"]
    for name, got, want in zip(names, fused[0][1:] + fused[1], unfused[0][1:] + unfused[1]):
        assert_matches(got, want, name)
