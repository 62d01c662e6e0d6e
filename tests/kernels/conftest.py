"""Shared set-up of the Triton kernel tests: without a GPU, kernels run on CPU tensors in the
Triton interpreter (TRITON_INTERPRET=1); on a machine with CUDA they run compiled.

`triton.jit` picks the interpreter when a kernel is *decorated* (module import), so the variable
is set here, before any test module imports sgkernels.kernels.triton, and only when it is unset
and no CUDA device is present (on a GPU machine the rest of the session, e.g. the GPU op tests,
must keep compiled kernels; set TRITON_INTERPRET=1 yourself to interpret there too).
Tests marked `@pytest.mark.interpret` are skipped unless the kernels are interpreted: they were
imported compiled first, or TRITON_INTERPRET is not 1.

Fixtures:
    poison            poison(t): fill t with NaN (ints: -1) in place and return it
    poisoned_empty    torch.empty / torch.empty_like return poisoned tensors while the test runs,
                      so an output element a kernel never writes cannot pass as a valid value
    assert_matches    assert_matches(actual, expected, name): closeness to the reference with a
                      tolerance of a few ulps of the dtype, scaled by the largest |expected|
"""
import os
import sys

import pytest
import torch

_COMPILED_EARLY = os.environ.get("TRITON_INTERPRET") != "1" and any(
    name.startswith("sgkernels.kernels.triton") for name in sys.modules)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1" and not _COMPILED_EARLY

# (rtol, atol relative to max |expected|): the kernels compute in fp32 and round once on store;
# the interpreter truncates fp32 -> bf16/fp16 stores (1 ulp) where the reference rounds (1/2 ulp).
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3),
             torch.bfloat16: (1.6e-2, 1.6e-2)}


def pytest_collection_modifyitems(config, items):
    if INTERPRETING:
        return
    skip = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 set before sgkernels.kernels.triton "
                                   "is imported")
    for item in items:
        if "interpret" in item.keywords:
            item.add_marker(skip)


def _poison(t):
    return t.fill_(float("nan") if t.is_floating_point() else -1)


@pytest.fixture
def poison():
    return _poison


@pytest.fixture
def poisoned_empty(monkeypatch):
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(empty_like(*a, **k)))


def _assert_matches(actual, expected, name=""):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOLERANCE[expected.dtype]
    scale = max(1.0, expected.float().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{name}: {m}")


@pytest.fixture
def assert_matches():
    return _assert_matches
