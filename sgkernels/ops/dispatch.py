"""Backend choice for sgkernels.ops.

A backend is a module of plain functions named as in docs/contracts.md ("Backends"):
    torch   sgkernels.kernels.torch          always available; the CPU path and the oracle
    triton  sgkernels.kernels.triton         CUDA tensors; CPU tensors only with TRITON_INTERPRET=1
    cuda    sgkernels.kernels.cuda           CUDA tensors, when sgkernels._C is built

Choice, first match wins:
    1. `with use_backend(name):`             (per thread / asyncio task: a ContextVar)
    2. SGKERNELS_BACKEND=torch|triton|cuda    (read at every call)
    3. CPU tensors -> torch; CUDA tensors -> cuda if available and it has the function, else
       triton if it imports and has the function, else torch.
A forced backend that cannot run the call raises: ImportError (module fails to import),
ValueError (wrong device), NotImplementedError (backend lacks the function).
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
_MODULES = {"triton": "sgkernels.kernels.triton", "cuda": "sgkernels.kernels.cuda"}
_forced = contextvars.ContextVar("sgkernels_backend", default=None)


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(f"{source}: backend must be one of {BACKENDS}, got {name!r}")


@contextlib.contextmanager
def use_backend(name):
    """Force backend `name` ("torch", "triton" or "cuda") for the ops called inside the block."""
    _check_name(name, "use_backend")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend():
    """The forced backend name (context manager, then SGKERNELS_BACKEND), or None."""
    name = _forced.get()
    if name is not None:
        return name
    name = os.environ.get("SGKERNELS_BACKEND", "").strip().lower()
    if not name:
        return None
    _check_name(name, "SGKERNELS_BACKEND")
    return name


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


def _forced_function(name, fn_name, device):
    module, error = _import(name)
    if module is None:
        raise ImportError(
            f"sgkernels.ops: backend {name!r} was forced for {fn_name} but "
            f"{_MODULES[name]} failed to import: {error!r}"
        ) from error
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


def get(fn_name, device):
    """The backend function `fn_name` (e.g. "rms_norm_fwd") to run on tensors of `device`;
    wrapped to run on `device` as the current CUDA device (Triton backend) and with autocast off
    when autocast is on (see sgkernels.ops.amp)."""
    fn = _select(fn_name, device)
    if _needs_device_guard(fn_name, fn, device):
        fn = _on_device(fn, device)
    if amp.enabled(device):
        return _without_autocast(fn, device.type)
    return fn


def _select(fn_name, device):
    name = forced_backend()
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


def backend_for(fn_name, device):
    """Name of the backend `get(fn_name, device)` would use (for logs, tests and benchmarks)."""
    fn = _select(fn_name, device)
    for name in BACKENDS:
        module, _ = _import(name)
        if module is not None and getattr(module, fn_name, None) is fn:
            return name
    raise AssertionError(f"{fn_name} resolved to an unknown backend")
