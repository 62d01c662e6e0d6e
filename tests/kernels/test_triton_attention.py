"""Triton varlen attention (forward, lse and every gradient) vs the torch reference backend,
per-segment SDPA and an fp64 oracle (house rule: at most 2x the error of a same-dtype torch
implementation), with strided q, k, v, o, dO and gradients written into one [T, 3, H, Dh]
buffer, axial RoPE, odd head dims (split 64 + 16 etc.), run by the Triton interpreter on CPU
tensors (GPU tests at the end)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import torch_rope_axial

from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton import attention, attention_bwd, attention_fwd, launch, rope
from sgkernels.kernels.triton.launch import INTERPRET as INTERPRETING

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
                                                 ([32, 19, 2], 2, 128), ([17, 1, 0], 2, 40),
                                                 ([0, 21, 3], 1, 96)])
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


# --- house rule: error vs an fp64 oracle at most 2x that of a same-dtype torch implementation ---

# tiny absolute slack, relative to the magnitude of the fp64 result (fp16 as in
# tests/ops/ops_oracle.py; fp32 errors here are ~5e-7, so its slack stays below 10x that)
REL_ATOL = {torch.float32: 2e-6, torch.float16: 1e-4}


def _torch_attention(q, k, v, cu_seqlens, scale, rope=None):
    """(o [T, H, Dh], lse [H, T]) segment by segment in the inputs' dtype, autograd-capable."""
    if rope is not None:
        q, k = torch_rope_axial(q, *rope), torch_rope_axial(k, *rope)
    outs, lses = [], []
    for start, end in itertools.pairwise(cu_seqlens.tolist()):
        if end > start:
            qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))    # [H, L, Dh]
            scores = (qs @ ks.transpose(-1, -2)) * scale
            outs.append((torch.softmax(scores, -1) @ vs).transpose(0, 1))
            lses.append(torch.logsumexp(scores.float(), -1))
    return torch.cat(outs), torch.cat(lses, -1)


def _torch_run(q, k, v, do, cu_seqlens, scale, rope, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    o, lse = _torch_attention(*leaves, cu_seqlens, scale, rope)
    o.backward(do.to(dtype))
    return [o.detach(), lse.detach()] + [t.grad for t in leaves]


def _judge(name, mine, plain, oracle, dtype):
    err = (mine.double() - oracle).abs().max().item()
    plain_err = (plain.double() - oracle).abs().max().item()
    bound = 2 * plain_err + REL_ATOL[dtype] * (1.0 + oracle.abs().max().item())
    assert err <= bound, (f"{name} ({dtype}): max error {err:.3g} vs fp64 exceeds 2 x same-dtype "
                          f"torch error {plain_err:.3g} + atol ({bound:.3g})")


def _house_rule(lengths, heads, dim, dtype, rope=False, seed=0, scale=None):
    """Triton o, lse, dq, dk, dv vs the fp64 oracle, bounded by the same-dtype torch error."""
    q, k, v, do = _inputs(lengths, heads, dim, dtype, seed)
    cu, total = _cu(lengths), sum(lengths)
    scale = dim ** -0.5 if scale is None else scale
    gen = torch.Generator().manual_seed(seed + 1)
    rope_args = (torch.randint(0, 24, (total, 2), generator=gen, dtype=torch.int32), 100.0) \
        if rope else None
    o, lse = attention.varlen_attention_fwd(q, k, v, cu, max(lengths), scale, rope_args)
    grads = attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, max(lengths), scale,
                                           rope_args)
    oracle = _torch_run(q, k, v, do, cu, scale, rope_args, torch.float64)
    plain = _torch_run(q, k, v, do, cu, scale, rope_args, dtype)
    for name, mine, want, same_dtype in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads),
                                            oracle, plain):
        assert mine.shape == want.shape and not mine.isnan().any(), name
        _judge(name, mine, same_dtype, want, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [40, 64, 72, 80, 96, 100, 128])
def test_house_rule_odd_head_dims(dim, dtype, poisoned_empty):
    """Head dims split 32 + 16 (40), 64 + 16 (72, 80), 64 + 32 (96) or kept whole (64, 100, 128);
    segments of length 1 and 0, partial key and query tiles; every gradient; outputs poisoned."""
    _house_rule([1, 0, 37, 20], 2, dim, dtype, seed=dim)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [72, 64, 40])
def test_house_rule_with_rope(dim, dtype, poisoned_empty):
    """Axial RoPE of q, k (pre-pass) and the rotation of dq, dk back, against fp64 RoPE +
    attention."""
    _house_rule([19, 1, 0, 33], 2, dim, dtype, rope=True, seed=dim + 1)


@pytest.mark.interpret
def test_house_rule_negative_scale():
    _house_rule([20, 7], 1, 72, torch.float16, seed=5, scale=-0.2)


# --- strided q, k, v, o, dO; gradients into one buffer; RoPE ------------------------------------

def _qkv_views(lengths, heads, dim, dtype, seed):
    """q, k, v as the three slots of one [T, 3, H, Dh] buffer; dO and o padded by an extra head
    (their own token strides); contiguous copies of all of them."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    qkv = torch.randn(total, 3, heads, dim, generator=gen).to(dtype)
    do_buf = torch.randn(total, heads + 1, dim, generator=gen).to(dtype)
    return qkv, do_buf[:, 1:], [t.contiguous() for t in (*qkv.unbind(1), do_buf[:, 1:])]


@pytest.mark.interpret
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("dim", [72, 64])
def test_strided_inputs_and_one_gradient_buffer(dim, rope, poison, poisoned_empty,
                                                assert_matches):
    """q, k, v read in place from [T, 3, H, Dh], o and dO with other token strides, dq, dk, dv
    written into the slots of one poisoned [T, 3, H, Dh] buffer: bitwise the results of
    contiguous inputs, and equal to the reference backend (with RoPE: rotated q, k)."""
    lengths, heads, scale = [13, 0, 1, 40], 2, 0.2
    cu, total = _cu(lengths), sum(lengths)
    qkv, do, (q, k, v, do_c) = _qkv_views(lengths, heads, dim, torch.float32, seed=dim)
    rope_args = (torch.randint(0, 9, (total, 2), dtype=torch.int32), 50.0) if rope else None
    o, lse = attention.varlen_attention_fwd(*qkv.unbind(1), cu, 40, scale, rope_args)
    o_c, lse_c = attention.varlen_attention_fwd(q, k, v, cu, 40, scale, rope_args)
    assert torch.equal(o, o_c) and torch.equal(lse, lse_c)
    o_ref, lse_ref = reference.varlen_attention_fwd(q, k, v, cu, 40, scale, rope_args)
    assert_matches(o, o_ref, "o")
    assert_matches(lse, lse_ref, "lse")

    o_strided = poison(torch.empty(total, heads + 3, dim))[:, 2:2 + heads].copy_(o)
    dqkv = poison(torch.empty(total, 3, heads, dim))
    out = attention.varlen_attention_bwd(do, *qkv.unbind(1), o_strided, lse, cu, 40, scale,
                                         rope_args, out=dqkv.unbind(1))
    assert all(g.data_ptr() == d.data_ptr() for g, d in zip(out, dqkv.unbind(1)))
    grads_c = attention.varlen_attention_bwd(do_c, q, k, v, o_c, lse_c, cu, 40, scale,
                                             rope_args)
    assert torch.equal(dqkv, torch.stack(grads_c, 1))
    grads_ref = reference.varlen_attention_bwd(do_c, q, k, v, o_ref, lse_ref, cu, 40, scale,
                                               rope_args)
    for name, got, want in zip(("dq", "dk", "dv"), dqkv.unbind(1), grads_ref):
        assert_matches(got, want, name)


def test_layout_check_rejects_sparse_heads():
    """Head and feature dims must be dense (the ops layer copies other layouts)."""
    q = torch.zeros(4, 2, 16)
    heads_apart = torch.zeros(2, 4, 16).transpose(0, 1)         # strides (16, 64, 1)
    features_apart = torch.zeros(4, 2, 32)[..., ::2]            # strides (64, 32, 2)
    for bad in (heads_apart, features_apart):
        with pytest.raises(ValueError, match="strides"):
            attention.varlen_attention_fwd(bad, q, q, _cu([4]), 4, 0.1)


@pytest.mark.interpret
@pytest.mark.parametrize("packed", [True, False])
def test_rope_rotation_in_place_round_trip(packed, monkeypatch):
    """rope.rotate_qk in place, then its inverse, returns q, k (a rotation); out-of-place equals
    the reference rotation. packed: q, k, the outputs are views of one [T, 3, H, Dh] buffer (one
    launch over a [T, 2H, Dh] view); else separate tensors (one launch each)."""
    qkv, _, _ = _qkv_views([11, 30], 3, 72, torch.float32, seed=3)
    pos = torch.randint(0, 40, (41, 2), dtype=torch.int64)
    q, k, v = (t.clone() for t in qkv.unbind(1))
    launches = []
    monkeypatch.setattr(rope, "rope_axial", lambda *a, _f=rope.rope_axial, **kw:
                        launches.append(a[0].shape) or _f(*a, **kw))
    src = (qkv[:, 0], qkv[:, 1]) if packed else (qkv[:, 0].clone(), qkv[:, 1].clone())
    rq, rk = rope.rotate_qk(*src, pos, 500.0)
    assert launches == ([(41, 6, 72)] if packed else [(41, 3, 72)] * 2)
    torch.testing.assert_close(rq, reference.rope_axial_fwd(q, pos, 500.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, reference.rope_axial_fwd(k, pos, 500.0), rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, 0], q) and torch.equal(qkv[:, 1], k)   # inputs unchanged
    # in place, on the qkv slots (packed) or on two separate tensors
    rq, rk = (qkv[:, 0].copy_(rq), qkv[:, 1].copy_(rk)) if packed else (rq.clone(), rk.clone())
    rope.rotate_qk(rq, rk, pos, 500.0, out=(rq, rk), inverse=True)
    assert len(launches) == (2 if packed else 4)
    torch.testing.assert_close(rq, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, k, rtol=1e-5, atol=1e-5)
    assert torch.equal(qkv[:, 2], v)


# --- head split, specialization, static specs -----------------------------------------------------

@pytest.mark.parametrize("dim, split", [(64, (64, 0)), (72, (64, 16)), (80, (64, 16)),
                                        (96, (64, 32)), (100, (128, 0)), (128, (128, 0)),
                                        (40, (32, 16)), (20, (32, 0)), (8, (16, 0)), (1, (16, 0))])
def test_head_split(dim, split):
    """Two power-of-two blocks (each >= 16, the smallest tl.dot K) covering Dh, kept only where
    narrower than one block: Dh 72 runs on 80 channels, not 128."""
    assert attention_fwd.head_split(dim) == split
    assert attention_fwd.block_d(dim) == sum(split) >= dim
    whole = max(16, 1 << (dim - 1).bit_length())   # fp32: one power-of-two block
    assert attention_fwd.head_split(dim, fp32=True) == (whole, 0)


def _specialization(kernel, dns, count):
    """Triton's launch specialization (types, divisibility / == 1 attributes) of a launch of
    `kernel` over `count` tokens, compiled with do_not_specialize `dns`, built for sm_90 without
    a GPU: pointers aligned, strides 16·72, token counts from `count`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jit = JITFunction(kernel.fn, do_not_specialize=dns)
    binder = create_function_from_signature(jit.signature, jit.params,
                                            make_backend(GPUTarget("cuda", 90, 32)))
    ints = {"n_tokens": count, "n_rows": 16 * count, "n_heads": 16}
    args = []
    for param in jit.params:
        if param.is_constexpr:
            args.append(16)
        elif param.name in ints:
            args.append(ints[param.name])
        elif param.name.startswith("stride"):
            args.append(16 * 72)
        elif param.name in ("qk_scale_log2", "sm_scale"):
            args.append(0.5)
        else:
            args.append(torch.zeros(16))
    return [spec for spec in binder(*args)[1] if spec[0] != "constexpr"]


@pytest.mark.parametrize("name", ["_attn_fwd_kernel", "_attn_bwd_dkdv_kernel",
                                  "_attn_bwd_dq_kernel", "_attn_bwd_preprocess_kernel",
                                  "_rope_axial_kernel"])
def test_token_counts_do_not_recompile(name):
    """A new routed token count (256, 17, 1, 4099 tokens) gives the same launch specialization,
    hence no recompilation; with the token arguments specialized it would not (control). The
    RoPE kernel is the attention's pre-pass."""
    kernel = getattr(rope if "rope" in name else attention_bwd if "bwd" in name
                     else attention_fwd, name)
    dns = sorted(launch.unspecialized(kernel))
    token_args = [n for n in ("n_tokens", "n_rows") if n in kernel.arg_names]
    assert token_args and set(token_args) <= set(dns)
    sig = [_specialization(kernel, dns, n) for n in (256, 17, 1, 4099)]
    assert all(s == sig[0] for s in sig)
    assert _specialization(kernel, [], 256) != _specialization(kernel, [], 17)


def test_static_specs_cover_every_config():
    """One spec per (kernel, head dim, config) of the fp16/bf16 and the fp32 config lists, unique
    names, fp32 ones on fp32 pointers with 3xTF32 products on one head block; token counts carry
    no divisibility hint (a launch never specializes them)."""
    specs = attention.static_specs()
    names = [name for name, _, _ in specs]
    assert len(names) == len(set(names))
    by_name = {name: src for name, src, _ in specs}
    for dim in attention.SPEC_HEAD_DIMS:
        for kernel, configs, fp32_configs in (
                ("_attn_fwd_kernel", attention_fwd.FWD_CONFIGS, attention_fwd.FWD_FP32_CONFIGS),
                ("_attn_bwd_dkdv_kernel", attention_bwd.DKDV_CONFIGS,
                 attention_bwd.DKDV_FP32_CONFIGS),
                ("_attn_bwd_dq_kernel", attention_bwd.DQ_CONFIGS, attention_bwd.DQ_FP32_CONFIGS)):
            kept = launch.REGISTRY[kernel].kept(**dict(zip(
                ("D_A", "D_B"), attention_fwd.head_split(dim))), HEAD_DIM=dim)
            assert {f"{kernel}_d{dim}[{i}]" for i in kept} <= set(names)
            fp32 = {f"{kernel}_fp32_d{dim}[{i}]" for i in range(len(fp32_configs))}
            assert fp32 <= set(names)
            for name in fp32:
                src = by_name[name]
                assert src.signature["Q"] == "*fp32"
                constants = {src.fn.arg_names[k[0]]: v for k, v in src.constants.items()}
                assert constants["DOT_PRECISION"] == "tf32x3"
                assert (constants["D_A"], constants["D_B"]) == attention_fwd.head_split(dim, True)
        assert {f"_attn_bwd_preprocess_kernel_d{dim}",
                f"_attn_bwd_preprocess_kernel_fp32_d{dim}"} <= set(names)
    for _, src, _ in specs:
        hinted = {src.fn.arg_names[key[0]] for key in src.attrs}
        strides = {n for n in src.fn.arg_names if n.startswith("stride")}
        assert not hinted & {"n_tokens", "n_rows"} and strides <= hinted


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
