"""The public ops on CUDA tensors with the automatically chosen backend (cuda, triton or torch)
and with each backend forced, judged like the CPU tests: error vs an fp64 oracle at most 2x the
error of plain torch in the same dtype.

Dtypes: every case in bf16 (the dtype the models run in) with every backend, plus one fp16 case
per op (the automatic backend; not repeated for the swiglu_packed / hd-72 variants): a GPU
lease compiles each Triton kernel once per dtype, and fp16 takes the same code paths as bf16."""
import contextlib

import pytest
import torch
from ops_oracle import compare
from test_ops_attention_rope import attention_inputs, torch_rope_axial, torch_varlen_attention
from test_ops_norm import segments, torch_modulate, torch_rms_norm
from test_ops_residual_swiglu import torch_gated_residual, torch_swiglu
from test_ops_route_norm import op_route_start, torch_route_start
from test_ops_routing import torch_gather, torch_scatter

from sgkernels import ops
from sgkernels.ops import dispatch

pytestmark = pytest.mark.gpu


def _cases():
    lengths = [5, 0, 130, 64, 64]
    tokens, nseg, dim = sum(lengths), len(lengths), 1152
    idx = torch.randperm(tokens)[: tokens // 2]
    return {
        "rms_norm": (ops.rms_norm, torch_rms_norm,
                     {"x": torch.randn(tokens, dim), "weight": torch.randn(dim)}, ("x", "weight"), ()),
        "rms_norm_modulate": (ops.rms_norm_modulate, torch_modulate,
                              {"x": torch.randn(tokens, dim), "weight": torch.randn(dim),
                               "shift": torch.randn(nseg, dim), "scale": torch.randn(nseg, dim),
                               "seg": segments(lengths)}, ("x", "weight", "shift", "scale"), ()),
        "gated_residual": (ops.gated_residual, torch_gated_residual,
                           {"x": torch.randn(tokens, dim), "y": torch.randn(tokens, dim),
                            "gate": torch.randn(nseg, dim), "seg": segments(lengths)}, ("x", "y", "gate"), ()),
        "swiglu": (ops.swiglu, torch_swiglu,
                   {"a": torch.randn(tokens, 3072), "b": torch.randn(tokens, 3072)}, ("a", "b"), ()),
        "swiglu_packed": (ops.swiglu, torch_swiglu, {"a": torch.randn(tokens, 6144)}, ("a",), ()),
        "route_gather": (ops.route_gather, torch_gather, {"x": torch.randn(tokens, dim), "idx": idx}, ("x",), ()),
        "route_scatter": (ops.route_scatter, torch_scatter,
                          {"base": torch.randn(tokens, dim), "y": torch.randn(idx.numel(), dim), "idx": idx},
                          ("base", "y"), ()),
        "route_gather_rms_norm_modulate": (
            op_route_start, torch_route_start,
            {"x": torch.randn(tokens, dim), "idx": torch.randperm(tokens)[:132],
             "weight": torch.randn(dim), "shift": torch.randn(nseg, dim),
             "scale": torch.randn(nseg, dim), "seg": segments([3, 0, 65, 32, 32])},
            ("x", "weight", "shift", "scale"), ()),
        "varlen_attention": (ops.varlen_attention, torch_varlen_attention,
                             attention_inputs(lengths, 4, 64), ("q", "k", "v"), ()),
        "varlen_attention_hd72": (ops.varlen_attention, torch_varlen_attention,
                                  attention_inputs(lengths, 2, 72), ("q", "k", "v"), ()),
        "rope_axial": (ops.rope_axial, torch_rope_axial,
                       {"x": torch.randn(tokens, 4, 64), "pos": torch.randint(0, 32, (tokens, 2), dtype=torch.int32)},
                       ("x",), ("pos",)),
    }


def _backend_fns(name):
    """Backend functions the forward and backward of case `name` call."""
    if name == "route_gather":
        return ("route_gather_fwd", "route_scatter_fwd")
    op = {"swiglu_packed": "swiglu", "varlen_attention_hd72": "varlen_attention"}.get(name, name)
    return (f"{op}_fwd", f"{op}_bwd")


def _to_cuda(inputs):
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


BACKENDS = (None, "torch", "triton", "cuda")
VARIANTS = ("swiglu_packed", "varlen_attention_hd72")  # second cases of an op already covered
CASES = [pytest.param(name, torch.bfloat16, backend, id=f"{name}-bf16-{backend or 'auto'}")
         for name in _cases() for backend in BACKENDS]
CASES += [pytest.param(name, torch.float16, None, id=f"{name}-fp16-auto")
          for name in _cases() if name not in VARIANTS]


@pytest.mark.parametrize("name, dtype, backend", CASES)
def test_ops_on_cuda(name, dtype, backend):
    torch.manual_seed(0)
    op_fn, torch_fn, inputs, diff, keep = _cases()[name]
    inputs = _to_cuda(inputs)
    if backend == "cuda":
        module, _ = dispatch._import("cuda")
        fns = _backend_fns(name)
        if module is None or not module.available() or not all(hasattr(module, f) for f in fns):
            pytest.skip(f"the cuda backend (sgkernels._C) is not built or lacks {fns}")
    with ops.use_backend(backend) if backend else contextlib.nullcontext():
        compare(op_fn, torch_fn, inputs, dtype, diff, keep=keep)


def test_cuda_default_prefers_a_kernel_backend():
    device = torch.device("cuda")
    names = {dispatch.backend_for(f"{op}_fwd", device) for op in ("rms_norm", "swiglu", "varlen_attention")}
    assert names - {"torch"}, "no kernel backend imports on this CUDA machine"
