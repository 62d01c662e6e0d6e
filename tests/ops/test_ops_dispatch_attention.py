"""The choice of varlen_attention's backend among the library backends (flash, torch-varlen)
and the others: forced by use_backend / SGKERNELS_ATTENTION_BACKEND for the attention functions
only, automatic on CUDA by the documented rule (ops/dispatch.py), clear errors. Fake modules
stand in for every backend but torch; the real support rule (kernels/library_attention.py)
judges stand-in CUDA tensors (`capability` patched), so no GPU is needed."""
import types

import pytest
import torch

from sgkernels import ops
from sgkernels.kernels import library_attention
from sgkernels.kernels import torch as reference
from sgkernels.ops import dispatch

FWD, BWD = "varlen_attention_fwd", "varlen_attention_bwd"


def _fake(name, **extra):
    functions = {fn: types.SimpleNamespace(backend=name, fn=fn) for fn in (FWD, BWD)}
    return types.SimpleNamespace(**functions, **extra)


@pytest.fixture
def backends(monkeypatch):
    """Fake triton, cuda (no attention), flash and torch-varlen modules on a GPU of compute
    capability 9.0; returns the dict (set an entry to None: that backend fails to import)."""
    modules = {
        "torch": reference,
        "triton": _fake("triton", rms_norm_fwd="triton rms_norm"),
        "cuda": types.SimpleNamespace(available=lambda: True, rms_norm_fwd="cuda rms_norm"),
        "flash": _fake("flash", unsupported=library_attention.unsupported),
        "torch-varlen": _fake("torch-varlen", unsupported=library_attention.unsupported),
    }
    monkeypatch.setattr(dispatch, "_import", lambda name: (
        (modules[name], None) if modules[name] is not None else (None, ImportError(name))))
    monkeypatch.setattr(library_attention, "capability", lambda device: (9, 0))
    for variable in ("SGKERNELS_BACKEND", "SGKERNELS_ATTENTION_BACKEND"):
        monkeypatch.delenv(variable, raising=False)
    return modules


def _q(dim=64, dtype=torch.bfloat16, device="cuda"):
    """A stand-in for q [T, H, Dh]: what the choice reads (device, dtype, head dim)."""
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(16, 2, dim))


def _choice(fn_name, q, scale=0.125):
    return dispatch.attention_backend_for(fn_name, q, scale)


def test_automatic_choice_on_cuda_by_head_dim(backends):
    """Libraries at head dims that are multiples of 32 or above 128: flash first for the
    forward, torch-varlen first for the backward (flash's recomputes the forward); Triton at
    the other head dims, where it pads less (72 -> 80, the libraries 96)."""
    for dim in (64, 96, 128, 160, 256):
        assert (_choice(FWD, _q(dim)), _choice(BWD, _q(dim))) == ("flash", "torch-varlen"), dim
    for dim in (72, 40, 120):
        assert (_choice(FWD, _q(dim)), _choice(BWD, _q(dim))) == ("triton", "triton"), dim
    fn = dispatch.get_attention(FWD, _q(), 0.125)
    assert fn is backends["flash"].varlen_attention_fwd     # no wrapper on the current device
    backends["flash"] = None
    assert _choice(FWD, _q()) == "torch-varlen"
    backends["torch-varlen"] = None
    assert _choice(BWD, _q()) == "triton"


@pytest.mark.parametrize("q, scale, why", [
    (_q(dtype=torch.float32), 0.125, "fp32"),
    (_q(dim=264), 0.125, "head dim above 256"),
    (_q(dim=36), 0.125, "head dim not a multiple of 8"),
    (_q(), 0.0, "scale 0"),
    (_q(), -0.1, "negative scale"),
    (_q(device="cpu"), 0.125, "CPU tensors"),
])
def test_automatic_choice_skips_calls_a_library_cannot_run(backends, q, scale, why):
    want = "torch" if q.device.type == "cpu" else "triton"
    assert _choice(FWD, q, scale) == want and _choice(BWD, q, scale) == want, why


def test_old_gpu_keeps_triton(backends, monkeypatch):
    monkeypatch.setattr(library_attention, "capability", lambda device: (7, 5))
    assert _choice(FWD, _q()) == "triton"


def test_library_names_force_the_attention_functions_only(backends, monkeypatch):
    cuda = torch.device("cuda")
    with ops.use_backend("flash"):
        assert _choice(FWD, _q(72)) == _choice(BWD, _q(72)) == "flash"   # head dim not asked
        assert dispatch.backend_for("rms_norm_fwd", cuda) == "cuda"        # as if not forced
        monkeypatch.setenv("SGKERNELS_BACKEND", "triton")
        assert dispatch.backend_for("rms_norm_fwd", cuda) == "triton"
        assert _choice(BWD, _q()) == "flash"
        with ops.use_backend("torch"):                                      # innermost wins
            assert _choice(FWD, _q()) == "torch"


def test_attention_variable_and_its_precedence(backends, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setenv("SGKERNELS_ATTENTION_BACKEND", "Torch-Varlen")
    monkeypatch.setenv("SGKERNELS_BACKEND", "triton")
    assert _choice(FWD, _q(72)) == _choice(BWD, _q()) == "torch-varlen"
    assert dispatch.backend_for("rms_norm_fwd", cuda) == "triton"
    with ops.use_backend("triton"):                  # the context manager wins over both
        assert _choice(FWD, _q()) == "triton"
    monkeypatch.setenv("SGKERNELS_ATTENTION_BACKEND", "torch")
    assert _choice(FWD, _q()) == "torch"
    monkeypatch.delenv("SGKERNELS_ATTENTION_BACKEND")
    assert _choice(FWD, _q()) == "triton"            # SGKERNELS_BACKEND applies to attention


def test_bad_names(backends, monkeypatch):
    monkeypatch.setenv("SGKERNELS_ATTENTION_BACKEND", "flash2")
    with pytest.raises(ValueError, match=r"SGKERNELS_ATTENTION_BACKEND: backend must be one of "
                                         r"\('torch', 'triton', 'cuda', 'flash', 'torch-varlen'\)"
                                         r", got 'flash2'"):
        _choice(FWD, _q())
    monkeypatch.delenv("SGKERNELS_ATTENTION_BACKEND")
    monkeypatch.setenv("SGKERNELS_BACKEND", "flash")
    with pytest.raises(ValueError, match=r"got 'flash' \(library backends: "
                                         r"SGKERNELS_ATTENTION_BACKEND\)"):
        dispatch.backend_for("rms_norm_fwd", torch.device("cuda"))
    with pytest.raises(ValueError, match=r"got 'flashattn' \(varlen_attention also takes "
                                         r"\('flash', 'torch-varlen'\)\)"):
        with ops.use_backend("flashattn"):
            pass


@pytest.mark.parametrize("q, scale, message", [
    (_q(dtype=torch.float32), 0.125, r"q must be fp16 or bf16, got torch.float32"),
    (_q(dim=36), 0.125, r"q's head dim Dh must be a multiple of 8 and at most 256, got 36"),
    (_q(), -1.0, r"scale must be > 0, got -1.0"),
    (_q(device="cpu"), 0.125, r"q must be a CUDA tensor, got a cpu tensor"),
])
def test_forced_library_that_cannot_run_the_call(backends, q, scale, message):
    with ops.use_backend("torch-varlen"):
        with pytest.raises(ValueError, match=r"backend 'torch-varlen' was forced for "
                                             r"varlen_attention_bwd, which it cannot run: "
                                             + message):
            dispatch.get_attention(BWD, q, scale)


def test_forced_library_on_an_old_gpu(backends, monkeypatch):
    monkeypatch.setattr(library_attention, "capability", lambda device: (7, 5))
    with ops.use_backend("flash"):
        with pytest.raises(ValueError, match=r"compute capability >= 8.0, got 7.5"):
            dispatch.get_attention(FWD, _q(), 0.125)


def test_forced_library_that_fails_to_import(backends):
    backends["flash"] = None
    with ops.use_backend("flash"):
        with pytest.raises(ImportError, match=r"backend 'flash' was forced for "
                                              r"varlen_attention_fwd but sgkernels.kernels.flash "
                                              r"failed to import"):
            dispatch.get_attention(FWD, _q(), 0.125)


def test_library_call_on_another_gpu_makes_it_current(backends, monkeypatch):
    """The RoPE pre-pass of the library backends is a Triton kernel, which launches on the
    current device: a call on cuda:1 tensors while cuda:0 is current is wrapped."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    flash_fwd = backends["flash"].varlen_attention_fwd
    assert dispatch.get_attention(FWD, _q(device="cuda:0"), 0.125) is flash_fwd
    wrapped = dispatch.get_attention(FWD, _q(device="cuda:1"), 0.125)
    assert wrapped is not flash_fwd and wrapped.__wrapped__ is flash_fwd
