"""Custom-op registration with a direct eager call.

`custom_op(name)` registers a function as `torch.library.custom_op(name, mutates_args=())` and
returns an `Op`: calling it goes through torch's dispatcher (autograd, fake tensors,
torch.compile, dispatch modes, the profiler's op names), except for a plain eager call, which
runs the function itself. The dispatcher's Python layers cost ~25 µs per call on CPU, more than
the math of a small op; a direct call gives the same outputs (the same function runs).

A call is direct (`direct(args)`) when nothing the dispatcher does applies:
    not tracing (torch.compile, torch.jit), no autograd recording (grad mode off, or no tensor
    argument requires grad), no TorchDispatchMode or TorchFunctionMode, no functorch transform,
    the profiler off, and every tensor argument a plain torch.Tensor or nn.Parameter on a real
    device (no other subclass: FakeTensor, DTensor, ...; not meta).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct(args) -> bool:
    """Whether an op call on `args` may skip the dispatcher (module docstring)."""
    if (torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or torch.autograd._profiler_enabled() or _get_current_dispatch_mode() is not None
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active()):
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in PLAIN or a.is_meta
                                            or (grad and a.requires_grad)):
            return False
    return True


class Op:
    """A registered custom op (`op`, a torch CustomOpDef) and the function it runs (`body`)."""

    def __init__(self, op, body):
        self.op, self.body = op, body

    def register_fake(self, fn):
        return self.op.register_fake(fn)

    def register_autograd(self, backward, setup_context):
        return self.op.register_autograd(backward, setup_context=setup_context)

    def __call__(self, *args):
        return self.body(*args) if direct(args) else self.op(*args)


def custom_op(name: str):
    """Decorator: register the (annotated) function as custom op `name` without mutated
    arguments; returns its `Op`."""
    def register(fn) -> Op:
        return Op(torch.library.custom_op(name, fn, mutates_args=()), fn)
    return register
