"""Backend choice for sgkernels.ops.

A backend is a module of plain functions named as in docs/contracts.md ("Backends"):
    torch         kernels.torch         always available; the CPU path and the oracle
    triton        kernels.triton        CUDA tensors; CPU tensors only with TRITON_INTERPRET=1
    cuda          kernels.cuda          CUDA tensors, when sgkernels._C is built
and the library backends of varlen_attention only (varlen_attention_fwd / _bwd), for the calls
their `unsupported(q, scale)` accepts (CUDA, fp16 / bf16, Dh % 8 == 0 up to 256, scale > 0):
    flash         kernels.flash         FlashAttention-3 / -2 (pip install 'sgkernels[flash]')
    torch-varlen  kernels.torch_varlen  torch.nn.attention.varlen (PyTorch's FlashAttention-2)

Choice, first match wins:
    1. `with use_backend(name):`             (per thread / asyncio task: a ContextVar); a library
                                              name applies to the attention functions only
    2. attention functions: SGKERNELS_ATTENTION_BACKEND=<any of the five>  (read at every call)
    3. SGKERNELS_BACKEND=torch|triton|cuda    (read at every call)
    4. CPU tensors -> torch; CUDA tensors -> attention functions: the first library of
       LIBRARY_ORDER that imports, supports the call and is expected faster at its head dim
       (`library_head_dim`); then, as for every function, cuda if available and it has the
       function, else triton if it imports and has the function, else torch.
A forced backend that cannot run the call raises: ImportError (module fails to import; a
library's message names what to install), ValueError (wrong device; a library: the reason of
its `unsupported`), NotImplementedError (backend lacks the function).
The choice is made inside the custom-op bodies, i.e. at run time, also under torch.compile.
"""
import contextlib
import contextvars
import functools
import importlib
import os

import torch

from sgkernels.kernels import torch as torch_backend

from . import amp

BACKENDS = ("torch", "triton", "cuda")
LIBRARY_BACKENDS = ("flash", "torch-varlen")   # varlen_attention_fwd / _bwd only
_MODULES = {"triton": "sgkernels.kernels.triton", "cuda": "sgkernels.kernels.cuda",
            "flash": "sgkernels.kernels.flash", "torch-varlen": "sgkernels.kernels.torch_varlen"}
# Automatic order of the libraries per function: flash's backward recomputes the forward
# (kernels/flash/attention.py), torch-varlen's does not.
LIBRARY_ORDER = {"varlen_attention_fwd": ("flash", "torch-varlen"),
                 "varlen_attention_bwd": ("torch-varlen", "flash")}
_forced = contextvars.ContextVar("sgkernels_backend", default=None)


def _check_name(name, source, names=BACKENDS, note=""):
    if name not in names:
        raise ValueError(f"{source}: backend must be one of {names}, got {name!r}{note}")


@contextlib.contextmanager
def use_backend(name):
    """Force backend `name` ("torch", "triton" or "cuda") for the ops called inside the block;
    a library backend ("flash", "torch-varlen") for varlen_attention only (other ops choose as
    if nothing were forced)."""
    if name not in LIBRARY_BACKENDS:
        _check_name(name, "use_backend", note=f" (varlen_attention also takes {LIBRARY_BACKENDS})")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _env_backend(variable, names, note=""):
    name = os.environ.get(variable, "").strip().lower()
    if not name:
        return None
    _check_name(name, variable, names, note)
    return name


def forced_backend(attention=False):
    """The forced backend name, or None: the context manager's, then (attention: the functions
    of varlen_attention) SGKERNELS_ATTENTION_BACKEND, then SGKERNELS_BACKEND. A library name
    is forced for the attention functions only."""
    name = _forced.get()
    if name is not None and (attention or name not in LIBRARY_BACKENDS):
        return name
    if attention:
        name = _env_backend("SGKERNELS_ATTENTION_BACKEND", BACKENDS + LIBRARY_BACKENDS)
        if name is not None:
            return name
    return _env_backend("SGKERNELS_BACKEND", BACKENDS,
                        " (library backends: SGKERNELS_ATTENTION_BACKEND)")


@functools.lru_cache(maxsize=None)
def _import(name):
    """(module, None) or (None, exception); cached so a failing import is attempted once."""
    if name == "torch":
        return torch_backend, None
    try:
        return importlib.import_module(_MODULES[name]), None
    except Exception as exc:  # any failure means: backend unavailable
        return None, exc


def _cuda_available(module):
    return module is not None and module.available()


def _forced_module(name, fn_name):
    module, error = _import(name)
    if module is None:
        raise ImportError(
            f"sgkernels.ops: backend {name!r} was forced for {fn_name} but "
            f"{_MODULES[name]} failed to import: {error!r}"
        ) from error
    return module


def _forced_function(name, fn_name, device):
    module = _forced_module(name, fn_name)
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"sgkernels.ops: backend 'triton' was forced for {fn_name} on {device.type} tensors; "
            "expected CUDA tensors, or set TRITON_INTERPRET=1 before importing triton"
        )
    if name == "cuda":
        if device.type != "cuda":
            raise ValueError(
                f"sgkernels.ops: backend 'cuda' was forced for {fn_name} on {device.type} "
                "tensors; expected CUDA tensors"
            )
        if not _cuda_available(module):
            raise ImportError(
                f"sgkernels.ops: backend 'cuda' was forced for {fn_name} but sgkernels._C "
                "is not built or no CUDA device is usable"
            )
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise NotImplementedError(f"sgkernels.ops: backend {name!r} has no {fn_name}")
    return fn


def _without_autocast(fn, device_type):
    @functools.wraps(fn)
    def run(*args):
        with torch.autocast(device_type, enabled=False):
            return fn(*args)

    return run


def _on_device(fn, device):
    @functools.wraps(fn)
    def run(*args):
        with torch.cuda.device(device):
            return fn(*args)

    return run


def _needs_device_guard(fn_name, fn, device):
    """Triton launches on the current CUDA device (the CUDA backend sets its own CUDAGuard and
    torch ops follow their tensors), so a Triton call on tensors of another device must first
    make theirs current: otherwise the kernel runs on the wrong GPU and faults."""
    if device.type != "cuda" or device.index is None:
        return False
    triton, _ = _import("triton")
    return (triton is not None and getattr(triton, fn_name, None) is fn
            and device.index != torch.cuda.current_device())


def _finish(fn, device, guard):
    """fn wrapped to run with `device` as the current CUDA device (guard) and with autocast off
    when autocast is on (see sgkernels.ops.amp)."""
    if guard:
        fn = _on_device(fn, device)
    if amp.enabled(device):
        return _without_autocast(fn, device.type)
    return fn


def get(fn_name, device):
    """The backend function `fn_name` (e.g. "rms_norm_fwd") to run on tensors of `device`;
    wrapped to run on `device` as the current CUDA device (Triton backend) and with autocast off
    when autocast is on (see sgkernels.ops.amp)."""
    return _get(fn_name, device, forced_backend())


def _get(fn_name, device, name):
    fn = _select(fn_name, device, name)
    return _finish(fn, device, _needs_device_guard(fn_name, fn, device))


def _select(fn_name, device, name):
    if name is not None:
        return _forced_function(name, fn_name, device)
    if device.type == "cuda":
        cuda, _ = _import("cuda")
        if _cuda_available(cuda) and hasattr(cuda, fn_name):
            return getattr(cuda, fn_name)
        triton, _ = _import("triton")
        if triton is not None and hasattr(triton, fn_name):
            return getattr(triton, fn_name)
    return getattr(torch_backend, fn_name)


def library_head_dim(head_dim):
    """Whether the automatic choice expects a library to beat the Triton kernels at this head
    dim: a multiple of 32 (a head size of the libraries' kernels, so no padded channels; at 72
    Triton pads to 80, the libraries to 96) or above 128 (beyond the Triton kernels). An
    expectation from the padded work, which benchmarks/bench_kernels.py on a GPU confirms or
    refutes (its sg:flash / sg:torch-varlen / sg:triton rows)."""
    return head_dim % 32 == 0 or head_dim > 128


def get_attention(fn_name, q, scale):
    """get() for varlen_attention_fwd / _bwd, whose choice also weighs the library backends
    (module docstring): q is the call's q (its device, dtype and head dim decide), scale its
    softmax scale. A library call on tensors of a CUDA device other than the current one runs
    with theirs made current (the RoPE pre-pass is a Triton kernel)."""
    device = q.device
    name = forced_backend(attention=True)
    fn = _library_function(name, fn_name, q, scale)
    if fn is None:
        return _get(fn_name, device, name)
    guard = device.index is not None and device.index != torch.cuda.current_device()
    return _finish(fn, device, guard)


def _library_function(name, fn_name, q, scale):
    """The library function to run (forced, or the automatic choice on CUDA tensors), or None
    when the choice is get()'s."""
    if name in LIBRARY_BACKENDS:
        module = _forced_module(name, fn_name)
        reason = module.unsupported(q, scale)
        if reason is not None:
            raise ValueError(f"sgkernels.ops: backend {name!r} was forced for {fn_name}, which "
                             f"it cannot run: {reason}")
        return getattr(module, fn_name)
    if name is not None or q.device.type != "cuda" or not library_head_dim(q.shape[-1]):
        return None
    for library in LIBRARY_ORDER[fn_name]:
        module, _ = _import(library)
        if module is not None and module.unsupported(q, scale) is None:
            return getattr(module, fn_name)
    return None


def _name_of(fn_name, fn):
    for name in BACKENDS + LIBRARY_BACKENDS:
        module, _ = _import(name)
        if module is not None and getattr(module, fn_name, None) is fn:
            return name
    raise AssertionError(f"{fn_name} resolved to an unknown backend")


def backend_for(fn_name, device):
    """Name of the backend `get(fn_name, device)` would use (for logs, tests and benchmarks)."""
    return _name_of(fn_name, _select(fn_name, device, forced_backend()))


def attention_backend_for(fn_name, q, scale):
    """Name of the backend `get_attention(fn_name, q, scale)` would use."""
    name = forced_backend(attention=True)
    fn = _library_function(name, fn_name, q, scale) or _select(fn_name, q.device, name)
    return _name_of(fn_name, fn)
