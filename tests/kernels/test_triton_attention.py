"""Triton varlen attention (forward, lse and every gradient) vs the torch reference backend and
per-segment SDPA, run by the Triton interpreter on CPU tensors (GPU tests at the end)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgkernels.kernels.triton import attention
from sgkernels.kernels.triton.launch import INTERPRET as INTERPRETING
from sgkernels.ops import reference

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")
# Compiled kernels on a CUDA device: run with TRITON_INTERPRET=0 (tests/kernels/conftest.py
# otherwise sets it to 1, and the interpreter would run these too).
compiled = pytest.mark.skipif(INTERPRETING, reason="needs compiled kernels (TRITON_INTERPRET=0)")


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)


def _inputs(lengths, heads, dim, dtype, seed=0, device="cpu", spread=1.0):
    """q, k, v, dO [T, H, Dh]; `spread` scales q (large values test the online-softmax max)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (sum(lengths), heads, dim)
    q, k, v, do = (torch.randn(shape, generator=gen) for _ in range(4))
    return [(t * s).to(device=device, dtype=dtype) for t, s in ((q, spread), (k, 1), (v, 1),
                                                                  (do, 1))]


def _sdpa(q, k, v, cu_seqlens, scale):
    """fp32 SDPA segment by segment (an oracle independent of the reference backend)."""
    out = torch.zeros(q.shape, dtype=torch.float32)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        if end > start:
            qs, ks, vs = (t[start:end].float().transpose(0, 1) for t in (q, k, v))
            out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1)
    return out


def _check(lengths, heads, dim, dtype, assert_matches, seed=0, spread=1.0, max_seqlen=None,
           scale=None):
    q, k, v, do = _inputs(lengths, heads, dim, dtype, seed, spread=spread)
    cu = _cu(lengths)
    scale = dim ** -0.5 if scale is None else scale
    max_seqlen = max(lengths) if max_seqlen is None else max_seqlen
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, max_seqlen, scale)
    o_ref, lse_ref = reference.varlen_attention_fwd(q, k, v, cu, max_seqlen, scale)
    assert_matches(o, o_ref, "o")
    assert_matches(lse, lse_ref, "lse")
    grads = attention.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, max_seqlen, scale)
    grads_ref = reference.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, max_seqlen, scale)
    for name, got, want in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_matches(got, want, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths, heads, dim", [([1, 0, 37, 50], 2, 64), ([5, 33, 0, 1], 1, 72),
                                                 ([32, 19, 2], 2, 128)])
@pytest.mark.interpret
def test_matches_reference(lengths, heads, dim, dtype, poisoned_empty, assert_matches):
    """Output, lse, dQ, dK, dV over odd segment lengths (0, 1, several blocks, partial blocks);
    outputs start as NaN, so any element a kernel does not write fails."""
    _check(lengths, heads, dim, dtype, assert_matches)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths, heads, dim", [([100], 1, 72), ([64, 31, 1], 2, 128),
                                                 ([48, 0, 0, 17], 2, 64)])
@pytest.mark.interpret
def test_matches_reference_more_shapes(lengths, heads, dim, dtype, poisoned_empty,
                                       assert_matches):
    _check(lengths, heads, dim, dtype, assert_matches, seed=1)


@pytest.mark.interpret
def test_large_scores_and_oversized_max_seqlen(poisoned_empty, assert_matches):
    """Scores of magnitude ~100 (exp overflows without the running max, and rows need rescaling
    across key tiles) and a max_seqlen larger than every segment (idle programs must exit)."""
    _check([45, 3], 2, 64, torch.float32, assert_matches, seed=2, spread=12.0, max_seqlen=70)


@pytest.mark.interpret
@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_negative_and_zero_scale(scale, poisoned_empty, assert_matches):
    """A negative scale flips which key is the row maximum; scale 0 is uniform attention."""
    _check([20, 7], 1, 64, torch.float32, assert_matches, seed=10, spread=4.0, scale=scale)


@pytest.mark.interpret
def test_forward_matches_sdpa():
    lengths, dim = [23, 1, 0, 40], 72
    q, k, v, _ = _inputs(lengths, 2, dim, torch.float32, seed=3)
    cu = _cu(lengths)
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, max(lengths), 0.3)
    torch.testing.assert_close(o, _sdpa(q, k, v, cu, 0.3), rtol=1e-5, atol=1e-5)
    # lse of the first token of segment 0, from its definition.
    scores = 0.3 * torch.einsum("hd,lhd->hl", q[0], k[:23])
    torch.testing.assert_close(lse[:, 0], torch.logsumexp(scores, -1), rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=4).filter(lambda ls: sum(ls) > 0))
@pytest.mark.interpret
def test_hypothesis_segment_lengths(lengths, poisoned_empty, assert_matches):
    _check(lengths, 1, 64, torch.float32, assert_matches, seed=4)


@pytest.mark.interpret
def test_gradients_are_deterministic():
    lengths = [30, 7, 41]
    q, k, v, do = _inputs(lengths, 2, 64, torch.float16, seed=5)
    cu = _cu(lengths)
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, 41, 0.125)
    first = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 41, 0.125)
    second = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 41, 0.125)
    for got, again in zip(first, second):
        assert torch.equal(got, again)


@pytest.mark.interpret
def test_empty_batches():
    q = torch.zeros(0, 2, 64)
    for lengths in ([0], [0, 0]):
        o, lse = attention.varlen_attention_fwd(q, q, q, _cu(lengths), 0, 0.125)
        assert o.shape == (0, 2, 64) and lse.shape == (2, 0) and lse.dtype == torch.float32
        grads = attention.varlen_attention_bwd(q, q, q, q, o, lse, _cu(lengths), 0, 0.125)
        assert [g.shape for g in grads] == [q.shape] * 3


def test_head_dim_above_128_is_rejected():
    q = torch.zeros(4, 1, 160)
    with pytest.raises(ValueError, match="head dim"):
        attention.varlen_attention_fwd(q, q, q, _cu([4]), 4, 0.1)


def _gpu_error(got, oracle):
    return (got.float() - oracle).abs().max().item()


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 72, 128])
def test_gpu_matches_fp32_oracle(dtype, dim):
    """On a GPU, errors vs an fp32 oracle stay within 3x those of the same-dtype torch reference
    (which rounds only its outputs) plus a few ulps; segment lengths span several tiles."""
    lengths = [256, 1, 0, 300, 77]
    q, k, v, do = _inputs(lengths, 4, dim, dtype, seed=7, device="cuda")
    cu, scale = _cu(lengths, "cuda"), dim ** -0.5
    ulp = torch.finfo(dtype).eps
    fp32 = [t.float() for t in (q, k, v, do)]
    o32, lse32 = reference.varlen_attention_fwd(*fp32[:3], cu, 300, scale)
    grads32 = reference.varlen_attention_bwd(fp32[3], *fp32[:3], o32, lse32, cu, 300, scale)
    o_ref, _ = reference.varlen_attention_fwd(q, k, v, cu, 300, scale)
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, 300, scale)
    assert _gpu_error(o, o32) <= 3 * _gpu_error(o_ref, o32) + 4 * ulp * o32.abs().max().item()
    assert _gpu_error(lse, lse32) <= 1e-3
    grads = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 300, scale)
    grads_ref = reference.varlen_attention_bwd(do, q, k, v, o, lse, cu, 300, scale)
    for got, ref, want in zip(grads, grads_ref, grads32):
        bound = 3 * _gpu_error(ref, want) + 4 * ulp * want.abs().max().item()
        assert _gpu_error(got, want) <= bound


@pytest.mark.gpu
@compiled
def test_gpu_fp32_is_close_to_reference():
    """fp32 runs 3xTF32 products: close to the fp32 reference, unlike plain tf32 (~1e-3)."""
    lengths = [200, 1, 333]
    q, k, v, do = _inputs(lengths, 2, 72, torch.float32, seed=9, device="cuda")
    cu = _cu(lengths, "cuda")
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, 333, 0.1)
    o_ref, lse_ref = reference.varlen_attention_fwd(q, k, v, cu, 333, 0.1)
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-4)
    grads = attention.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, 333, 0.1)
    grads_ref = reference.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, 333, 0.1)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@compiled
def test_gpu_gradients_are_deterministic():
    lengths = [512, 3, 1000]
    q, k, v, do = _inputs(lengths, 8, 128, torch.bfloat16, seed=8, device="cuda")
    cu = _cu(lengths, "cuda")
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, 1000, 128 ** -0.5)
    first = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 1000, 128 ** -0.5)
    second = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 1000, 128 ** -0.5)
    for got, again in zip(first, second):
        assert torch.equal(got, again)
