"""Backend choice: SGKERNELS_BACKEND, use_backend, the CUDA preference order and clear errors.
Fake backend modules stand in for Triton / CUDA so these tests need neither."""
import threading
import types

import pytest
import torch

from sgkernels import ops
from sgkernels.kernels import torch as reference
from sgkernels.ops import dispatch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def fake_backends(monkeypatch):
    """Install fake triton and cuda modules; returns (modules, calls)."""
    calls = []

    def recording(backend):
        def rms_norm_fwd(x, weight, eps):
            calls.append(backend)
            return reference.rms_norm_fwd(x, weight, eps)
        return rms_norm_fwd

    modules = {
        "torch": reference,
        "triton": types.SimpleNamespace(rms_norm_fwd=recording("triton")),
        "cuda": types.SimpleNamespace(rms_norm_fwd=recording("cuda"), available=lambda: True),
    }
    monkeypatch.setattr(dispatch, "_import", lambda name: (modules[name], None))
    monkeypatch.delenv("SGKERNELS_BACKEND", raising=False)
    return modules, calls


def test_cpu_default_is_torch(monkeypatch):
    monkeypatch.delenv("SGKERNELS_BACKEND", raising=False)
    assert dispatch.get("rms_norm_fwd", CPU) is reference.rms_norm_fwd
    assert dispatch.backend_for("varlen_attention_bwd", CPU) == "torch"


def test_cuda_order_cuda_then_triton_then_torch(fake_backends):
    modules, _ = fake_backends
    assert dispatch.backend_for("rms_norm_fwd", CUDA) == "cuda"
    modules["cuda"].available = lambda: False
    assert dispatch.backend_for("rms_norm_fwd", CUDA) == "triton"
    del modules["triton"].rms_norm_fwd
    assert dispatch.backend_for("rms_norm_fwd", CUDA) == "torch"


def test_cuda_falls_back_when_backends_fail_to_import(monkeypatch):
    monkeypatch.delenv("SGKERNELS_BACKEND", raising=False)
    broken = ImportError("half-written module")
    monkeypatch.setattr(
        dispatch, "_import", lambda name: (reference, None) if name == "torch" else (None, broken)
    )
    assert dispatch.get("swiglu_fwd", CUDA) is reference.swiglu_fwd


def test_env_var_and_context_manager(fake_backends, monkeypatch):
    _, calls = fake_backends
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(4, 8)
    monkeypatch.setenv("SGKERNELS_BACKEND", "triton")
    ops.rms_norm(x)
    with ops.use_backend("torch"):            # the context manager wins over the env var
        ops.rms_norm(x)
    monkeypatch.setenv("SGKERNELS_BACKEND", "torch")
    with ops.use_backend("triton"):
        with ops.use_backend("torch"):
            ops.rms_norm(x)
        ops.rms_norm(x)
    ops.rms_norm(x)
    assert calls == ["triton", "triton"]


def test_context_manager_is_per_thread(fake_backends):
    seen = []
    with ops.use_backend("triton"):
        worker = threading.Thread(target=lambda: seen.append(dispatch.forced_backend()))
        worker.start()
        worker.join()
        assert dispatch.forced_backend() == "triton"
    assert seen == [None] and dispatch.forced_backend() is None


def test_choice_is_made_at_run_time_under_compile(fake_backends, monkeypatch):
    _, calls = fake_backends
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fn = torch.compile(lambda t: ops.rms_norm(t) * 2, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 8)
    expected = fn(x)
    with ops.use_backend("triton"):
        torch.testing.assert_close(fn(x), expected)
    assert calls == ["triton"]


def test_bad_backend_names(monkeypatch):
    with pytest.raises(ValueError, match=r"use_backend: backend must be one of \('torch', 'triton', 'cuda'\), got 'jax'"):
        with ops.use_backend("jax"):
            pass
    monkeypatch.setenv("SGKERNELS_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"SGKERNELS_BACKEND: backend must be one of .* got 'tpu'"):
        ops.rms_norm(torch.randn(2, 4))


def test_forced_triton_on_cpu_needs_interpreter(fake_backends, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match=r"backend 'triton' was forced for rms_norm_fwd on cpu tensors.*TRITON_INTERPRET=1"):
            ops.rms_norm(torch.randn(2, 4))


def test_forced_backend_lacking_the_op(fake_backends, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with ops.use_backend("triton"):
        with pytest.raises(NotImplementedError, match=r"backend 'triton' has no swiglu_fwd"):
            ops.swiglu(torch.randn(2, 4))


def test_forced_cuda_on_cpu_tensors(fake_backends):
    with ops.use_backend("cuda"):
        with pytest.raises(ValueError, match=r"backend 'cuda' was forced for rms_norm_fwd on cpu tensors; expected CUDA"):
            ops.rms_norm(torch.randn(2, 4))


def test_forced_backend_that_fails_to_import(monkeypatch):
    monkeypatch.setitem(dispatch._MODULES, "triton", "sgkernels.no_such_backend")
    dispatch._import.cache_clear()
    try:
        with ops.use_backend("triton"):
            with pytest.raises(ImportError, match=r"backend 'triton' was forced for rms_norm_fwd but sgkernels.no_such_backend failed to import"):
                ops.rms_norm(torch.randn(2, 4))
    finally:
        dispatch._import.cache_clear()


@pytest.fixture
def fake_cuda_devices(monkeypatch):
    """torch.cuda.current_device / torch.cuda.device over a fake current-device index (starts 0),
    so the device guard can be checked without GPUs; returns the state dict."""
    state = {"current": 0}

    class FakeDevice:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.prev, state["current"] = state["current"], self.index

        def __exit__(self, *exc):
            state["current"] = self.prev

    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    return state


def test_triton_calls_run_on_their_tensors_device(fake_backends, fake_cuda_devices):
    """Triton launches on the current device: a call on cuda:1 tensors while cuda:0 is current
    must make cuda:1 current for the call, and restore cuda:0 after."""
    modules, _ = fake_backends
    modules["cuda"].available = lambda: False
    seen = []
    modules["triton"].rms_norm_fwd = lambda *args: seen.append(fake_cuda_devices["current"])
    dispatch.get("rms_norm_fwd", torch.device("cuda", 1))(None, None, 1e-6)
    dispatch.get("rms_norm_fwd", torch.device("cuda", 0))(None, None, 1e-6)
    assert seen == [1, 0] and fake_cuda_devices["current"] == 0
    # same device: no wrapper (no per-call cost); the CUDA backend guards itself (CUDAGuard)
    assert dispatch.get("rms_norm_fwd", torch.device("cuda", 0)) is modules["triton"].rms_norm_fwd
    modules["cuda"].available = lambda: True
    assert dispatch.get("rms_norm_fwd", torch.device("cuda", 1)) is modules["cuda"].rms_norm_fwd


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_backend_on_second_gpu():
    x = torch.randn(37, 96, device="cuda:1")
    w = torch.randn(96, device="cuda:1")
    with ops.use_backend("triton"):
        y = ops.rms_norm(x, w)
    torch.testing.assert_close(y, reference.rms_norm_fwd(x, w, 1e-6)[0])
