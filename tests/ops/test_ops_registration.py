"""torch.library registration: opcheck of every custom op (schema, fake tensor, autograd
registration, AOT dispatch) and torch.compile(fullgraph=True) through every public op."""
import pytest
import torch

from sgkernels import ops

sg = torch.ops.sgkernels


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _randn(*shape, grad=False):
    return torch.randn(*shape, dtype=torch.float32).requires_grad_(grad)


def _seg():
    return torch.tensor([0, 0, 1, 1, 1, 2], dtype=torch.int32)


def _kept_seg():
    return torch.tensor([0, 1, 1], dtype=torch.int32)


def _cases(grad):
    """(name, op overload, args); forward ops get inputs that require grad."""
    g = grad
    return [
        ("rms_norm", sg.rms_norm.default, (_randn(6, 8, grad=g), _randn(8, grad=g), 1e-6)),
        ("rms_norm_noweight", sg.rms_norm.default, (_randn(6, 8, grad=g), None, 1e-6)),
        ("rms_norm_modulate", sg.rms_norm_modulate.default,
         (_randn(6, 8, grad=g), _randn(8, grad=g), _randn(3, 8, grad=g), _randn(3, 8, grad=g), _seg(), 1e-6)),
        ("gated_residual", sg.gated_residual.default,
         (_randn(6, 8, grad=g), _randn(6, 8, grad=g), _randn(3, 8, grad=g), _seg())),
        ("swiglu", sg.swiglu.default, (_randn(6, 8, grad=g), _randn(6, 8, grad=g))),
        ("swiglu_packed", sg.swiglu_packed.default, (_randn(6, 16, grad=g),)),
        ("route_gather", sg.route_gather.default, (_randn(6, 8, grad=g), torch.tensor([4, 0, 2]))),
        ("route_scatter", sg.route_scatter.default,
         (_randn(6, 8, grad=g), _randn(3, 8, grad=g), torch.tensor([4, 0, 2], dtype=torch.int32))),
        ("route_gather_rms_norm_modulate", sg.route_gather_rms_norm_modulate.default,
         (_randn(6, 8, grad=g), torch.tensor([4, 0, 2]), _randn(8, grad=g), _randn(2, 8, grad=g),
          _randn(2, 8, grad=g), _kept_seg(), 1e-6)),
        ("route_gather_rms_norm_modulate_noweight", sg.route_gather_rms_norm_modulate.default,
         (_randn(6, 8, grad=g), torch.tensor([4, 0, 2], dtype=torch.int32), None,
          _randn(2, 8, grad=g), _randn(2, 8, grad=g), _kept_seg(), 1e-6)),
        ("varlen_attention", sg.varlen_attention.default,
         (_randn(7, 2, 8, grad=g), _randn(7, 2, 8, grad=g), _randn(7, 2, 8, grad=g), _cu([3, 0, 4]), 4, 0.3)),
        ("rope_axial", sg.rope_axial.default,
         (_randn(6, 2, 8, grad=g), torch.randint(0, 5, (6, 2), dtype=torch.int32), 100.0)),
        ("varlen_attention_qkv", sg.varlen_attention_qkv.default,
         (_randn(7, 3, 2, 8, grad=g), _cu([3, 0, 4]), 4, 0.3, None, 10000.0)),
        ("varlen_attention_qkv_rope", sg.varlen_attention_qkv.default,
         (_randn(7, 3, 2, 8, grad=g), _cu([3, 0, 4]), 4, 0.3,
          torch.randint(0, 5, (7, 2), dtype=torch.int32), 100.0)),
    ]


def _backward_cases():
    x, w, rstd = _randn(6, 8), _randn(8), torch.rand(6) + 0.5
    q, k, v = _randn(7, 2, 8), _randn(7, 2, 8), _randn(7, 2, 8)
    o, lse = sg.varlen_attention(q, k, v, _cu([3, 0, 4]), 4, 0.3)
    qkv = torch.stack([q, k, v], 1)
    return [
        ("rms_norm_backward", sg.rms_norm_backward.default, (_randn(6, 8), x, w, rstd)),
        ("rms_norm_backward_noweight", sg.rms_norm_backward.default, (_randn(6, 8), x, None, rstd)),
        ("rms_norm_modulate_backward", sg.rms_norm_modulate_backward.default,
         (_randn(6, 8), x, w, _randn(3, 8), _seg(), rstd)),
        ("gated_residual_backward", sg.gated_residual_backward.default,
         (_randn(6, 8), _randn(6, 8), _randn(3, 8), _seg())),
        ("swiglu_backward", sg.swiglu_backward.default, (_randn(6, 8), _randn(6, 8), _randn(6, 8))),
        ("swiglu_packed_backward", sg.swiglu_packed_backward.default, (_randn(6, 8), _randn(6, 16))),
        ("route_gather_backward", sg.route_gather_backward.default, (_randn(3, 8), torch.tensor([4, 0, 2]), 6)),
        ("route_scatter_backward", sg.route_scatter_backward.default, (_randn(6, 8), torch.tensor([4, 0, 2]))),
        ("route_gather_rms_norm_modulate_backward",
         sg.route_gather_rms_norm_modulate_backward.default,
         (_randn(3, 8), _randn(3, 8), _randn(3, 8), torch.tensor([4, 0, 2]), w, _randn(2, 8),
          _kept_seg(), rstd[:3], 6)),
        ("route_gather_rms_norm_modulate_backward_noweight",
         sg.route_gather_rms_norm_modulate_backward.default,
         (_randn(3, 8), _randn(3, 8), _randn(3, 8), torch.tensor([4, 0, 2]), None, _randn(2, 8),
          _kept_seg(), rstd[:3], 6)),
        ("varlen_attention_backward", sg.varlen_attention_backward.default,
         (_randn(7, 2, 8), q, k, v, o, lse, _cu([3, 0, 4]), 4, 0.3)),
        ("rope_axial_backward", sg.rope_axial_backward.default,
         (_randn(6, 2, 8), torch.randint(0, 5, (6, 2)), 100.0)),
        ("varlen_attention_qkv_backward", sg.varlen_attention_qkv_backward.default,
         (_randn(7, 2, 8), qkv, o, lse, _cu([3, 0, 4]), 4, 0.3, None, 10000.0)),
    ]


@pytest.mark.parametrize("case", _cases(grad=True), ids=lambda c: c[0])
def test_opcheck_forward_ops_with_grad(case):
    _, op, args = case
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", _cases(grad=False) + _backward_cases(), ids=lambda c: c[0])
def test_opcheck_without_grad(case):
    _, op, args = case
    torch.library.opcheck(op, args)


def _model(x, w, shift, scale, gate, seg, idx, pos, cu):
    """A tiny block using every public op."""
    h = ops.rms_norm_modulate(x, w, shift, scale, seg)
    kept = ops.route_gather(h, idx)
    q = ops.rope_axial(kept.reshape(-1, 2, 4), pos)
    a = ops.varlen_attention(q, q, kept.reshape(-1, 2, 4), cu, 3).reshape(-1, 8)
    a = a + ops.varlen_attention_qkv(torch.stack([q, a.view(-1, 2, 4), q], 1), cu, 3,
                                     rope=(pos, 100.0)).reshape(-1, 8)
    a = ops.route_scatter(h, ops.swiglu(a, ops.rms_norm(a)), idx)
    out = ops.gated_residual(x, ops.swiglu(torch.cat([a, a * 0.5], -1)), gate, seg)
    routed, normed = ops.route_gather_rms_norm_modulate(out, idx, w, shift, scale, seg[idx])
    return ops.route_scatter(out, routed + normed, idx)


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(11)
    seg = _seg()
    args = [_randn(6, 8, grad=True), _randn(8, grad=True), _randn(3, 8, grad=True),
            _randn(3, 8, grad=True), _randn(3, 8, grad=True), seg,
            torch.tensor([0, 1, 3, 5]), torch.randint(0, 4, (4, 2)), _cu([2, 2])]
    compiled = torch.compile(_model, backend="aot_eager", fullgraph=True)
    eager_out = _model(*args)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), args[:5])
    out = compiled(*args)
    grads = torch.autograd.grad(out.square().sum(), args[:5])
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(grads, eager_grads)


def test_compiled_graphs_hold_the_custom_ops_forward_and_backward():
    """AOT autograd keeps each op and its backward as one opaque node (no Python autograd)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, _example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    torch._dynamo.reset()
    args = [_randn(6, 8, grad=True), _randn(8, grad=True), _randn(3, 8, grad=True),
            _randn(3, 8, grad=True), _randn(3, 8, grad=True), _seg(),
            torch.tensor([0, 1, 3, 5]), torch.randint(0, 4, (4, 2)), _cu([2, 2])]
    out = torch.compile(_model, backend=backend, fullgraph=True)(*args)
    out.sum().backward()
    assert len(graphs) == 2
    names = [{str(n.target) for n in g.graph.nodes if n.op == "call_function"} for g in graphs]
    forward = {"rms_norm", "rms_norm_modulate", "route_gather", "route_scatter", "rope_axial",
               "varlen_attention", "varlen_attention_qkv", "swiglu", "swiglu_packed", "gated_residual",
               "route_gather_rms_norm_modulate"}
    assert {f"sgkernels.{op}.default" for op in forward} <= names[0]
    backward = {f"sgkernels.{op}_backward.default" for op in forward}
    assert backward <= names[1]
