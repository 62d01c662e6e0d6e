"""Every GPU config of every autotuned Triton kernel (launch.REGISTRY) against the torch
reference, once each: under the interpreter on CPU tensors (default suite) and compiled on CUDA
(`gpu`). Shapes span several tiles of the largest configs (rows past BLOCK_M = 16, columns past
BLOCK_D = 1024, an attention segment past BLOCK_M = 128 tokens), with odd sizes, an empty segment
and outputs that start as NaN. Also: kernels never specialize on row or token counts.

`launch.forced_config(i)` makes every autotuned kernel run its config i (clamped to its last);
each case calls one backend function, first under config 0 to learn which kernels it launches,
then under every further config of those kernels. The test fails when a registered
(kernel, config) pair was never launched: a new kernel or config needs a case here.
"""
import inspect

import pytest
import torch

import sgkernels.kernels.triton as backend
from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import (launch, norm, residual, rope, route_norm, routing, segments,
                                     swiglu)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.interpret),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        launch.INTERPRET, reason="kernels were imported for the interpreter (TRITON_INTERPRET=1)")]),
]
# Attention error bound (_assert_near_oracle) per input dtype: fp32 products are 3xTF32 on a GPU.
ATTENTION_ULP = {torch.float32: 1e-5, torch.float16: torch.finfo(torch.float16).eps}


def _cases(device):
    """name -> (run(module) -> outputs of one backend function, fp32 oracle outputs or None)."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    seg = torch.repeat_interleave(torch.arange(3, dtype=torch.int32),
                                  torch.tensor([17, 0, 20])).to(device)   # 37 rows
    idx = torch.randperm(45, generator=gen)[:37].to(device)               # 37 of 45 rows
    x, x_wide, w, shift, scale = randn(37, 40), randn(45, 40), randn(40), randn(3, 40), randn(3, 40)
    res = [randn(37, 600), randn(37, 600), randn(3, 600), seg]
    ab, dout = randn(19, 2 * 1100), randn(19, 1100)
    a, b = ab[:, :1100], ab[:, 1100:]
    rows, kept = randn(45, 1100), randn(37, 1100)
    x_rope, pos = randn(37, 9, 72), torch.randint(0, 30, (37, 2), generator=gen).to(device)

    def swiglu_bwd(m):
        grad = torch.empty(19, 2 * 1100, device=device)  # NaN under poisoned_empty
        m.swiglu_bwd(dout, a, b, grad[:, :1100], grad[:, 1100:])
        return grad

    cases = {
        "rms_norm": (lambda m: m.rms_norm_fwd(x, w, 1e-6), None),
        "rms_norm_modulate": (lambda m: m.rms_norm_modulate_fwd(x, w, shift, scale, seg, 1e-6),
                              None),
        "route_gather_rms_norm_modulate": (lambda m: m.route_gather_rms_norm_modulate_fwd(
            x_wide, idx, w, shift, scale, seg, 1e-6), None),
        "gated_residual": (lambda m: m.gated_residual_fwd(*res), None),
        "swiglu": (lambda m: m.swiglu_fwd(a, b), None),
        "swiglu_bwd": (swiglu_bwd, None),
        "route_gather": (lambda m: m.route_gather_fwd(rows, idx), None),
        "route_scatter": (lambda m: m.route_scatter_fwd(rows, kept, idx), None),
        "route_scatter_bwd": (lambda m: m.route_scatter_bwd(rows, idx), None),
        "rope_axial": (lambda m: m.rope_axial_fwd(x_rope, pos, 100.0), None),
    }
    cu = torch.tensor([0, 150, 150, 187], dtype=torch.int32, device=device)
    for dtype in (torch.float32, torch.float16):
        q, k, v, do = (randn(187, 2, 64, dtype=dtype) for _ in range(4))
        o, lse = reference.varlen_attention_fwd(q, k, v, cu, 150, 0.125)
        fp32 = [t.float() for t in (do, q, k, v, o)]
        name = str(dtype).removeprefix("torch.")
        cases[f"attention_fwd_{name}"] = (
            lambda m, q=q, k=k, v=v: m.varlen_attention_fwd(q, k, v, cu, 150, 0.125),
            reference.varlen_attention_fwd(*fp32[1:4], cu, 150, 0.125))
        cases[f"attention_bwd_{name}"] = (
            lambda m, args=(do, q, k, v, o, lse): m.varlen_attention_bwd(*args, cu, 150, 0.125),
            reference.varlen_attention_bwd(*fp32, lse, cu, 150, 0.125))
    return cases


def _outputs(out):
    return [t.clone() for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


def _assert_near_oracle(got, want, oracle, name):
    """|got − oracle| ≤ 3·|want − oracle| + 4·ulp·max|oracle|, want the same-dtype reference
    (the accuracy rule of the kernel tests; attention rounds P and dS to the input dtype for
    its products)."""
    def err(t):
        return (t.float() - oracle).abs().max().item()

    assert not got.isnan().any(), f"{name}: NaN left (an element was never written)"
    ulp = ATTENTION_ULP[want.dtype]
    bound = 3 * err(want) + 4 * ulp * max(1.0, oracle.abs().max().item())
    assert err(got) <= bound, f"{name}: error {err(got):.3g} > bound {bound:.3g}"


def _run_case(name, run, oracle, index, assert_matches):
    with launch.forced_config(index):
        got = _outputs(run(backend))
    want = _outputs(run(reference))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        label = f"{name} config {index} output {i}"
        if oracle is None:
            assert_matches(g, w, label)
        else:
            _assert_near_oracle(g, w, _outputs(oracle)[i], label)


CASES = list(_cases("cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_every_config_of_every_kernel_it_launches(case, device, poisoned_empty, assert_matches):
    """One backend function under every config of each kernel it launches (one test per case, so
    pytest-xdist spreads the GPU compiles over workers and each test stays short)."""
    run, oracle = _cases(device)[case]
    launch.LAUNCHED.clear()
    _run_case(case, run, oracle, 0, assert_matches)
    kernels = {kernel for kernel, _ in launch.LAUNCHED}
    for index in range(1, max((len(launch.REGISTRY[k].configs) for k in kernels), default=1)):
        _run_case(case, run, oracle, index, assert_matches)
    wanted = {(k, i) for k in kernels for i in range(len(launch.REGISTRY[k].configs))}
    assert wanted <= launch.LAUNCHED, f"never launched: {sorted(wanted - launch.LAUNCHED)}"


@pytest.mark.interpret
def test_the_cases_launch_every_autotuned_kernel(poisoned_empty):
    """Every kernel in launch.REGISTRY is launched by some case (with the test above: every
    registered (kernel, config) pair runs); a new autotuned kernel needs a case here."""
    launch.LAUNCHED.clear()
    with launch.forced_config(0):
        for run, _ in _cases("cpu").values():
            run(backend)
    launched = {kernel for kernel, _ in launch.LAUNCHED}
    assert launched == set(launch.REGISTRY), sorted(set(launch.REGISTRY) ^ launched)


# Integer arguments that count rows or tokens (they change with every routed batch).
ROW_COUNTS = {"M", "K", "T", "n_tokens", "n_rows"}


@pytest.mark.parametrize("module", [norm, route_norm, residual, swiglu, routing, rope, segments],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_kernels_do_not_specialize_on_row_counts(module):
    """Triton specializes an int argument on being 1 or divisible by 16 unless it is
    do_not_specialize: a row count would compile a kernel again for a new routed batch."""
    kernels = [k for _, k in inspect.getmembers(module) if hasattr(k, "arg_names")
               and k.__name__.endswith("_kernel")]
    assert kernels
    for kernel in kernels:
        counts = ROW_COUNTS & set(kernel.arg_names)
        assert counts <= launch.unspecialized(kernel), (kernel.__name__, counts)
