"""The library backends of varlen_attention: flash (FlashAttention-3 / -2) and torch-varlen
(torch.nn.attention.varlen).

Without a GPU: the flash backend runs over fake flash_attn / flash_attn_interface modules put in
sys.modules (computing with the torch backend on CPU tensors, with an autograd.Function as the
real libraries have), so its argument plumbing, library choice, gradient recomputation, RoPE
and output buffers are checked, also through the public ops and the dispatcher; torch-varlen's
calls are bound to the installed torch's real ops on meta tensors (their fake kernels), which
checks every argument against the ops' schemas. On a GPU (marked gpu, skipped with the reason
when a library is missing or cannot run there): every library backend's o, lse, dQ, dK, dV
against an fp32 oracle, as the Triton attention is judged, and the packed op with RoPE through
the dispatcher.
"""
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from sgkernels import ops
from sgkernels.kernels import library_attention
from sgkernels.kernels import torch as reference
from sgkernels.kernels.triton.launch import INTERPRET as INTERPRETING
from sgkernels.ops import dispatch

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")
LIBRARIES = dispatch.LIBRARY_BACKENDS


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)


def _inputs(lengths, heads, dim, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (sum(lengths), heads, dim)
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(4)]


# --- fake FlashAttention modules (CPU) -------------------------------------------------------

class _FakeFlashAttention(torch.autograd.Function):
    """The torch backend behind an autograd.Function, as flash_attn's FlashAttnVarlenFunc."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale):
        o, lse = reference.varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.max_seqlen, ctx.scale = max_seqlen, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        grads = reference.varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, ctx.max_seqlen,
                                               ctx.scale)
        return (*grads, None, None, None)


def _fake_library(name, calls):
    """A module with flash_attn_varlen_func under FA2's (name "flash_attn") or FA3's argument
    names and return conventions, recording (name, deterministic, q.requires_grad) per call."""

    def attend(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal, deterministic,
               probs):
        assert cu_q is cu_k and max_q == max_k and dropout_p == 0.0 and causal is False
        calls.append((name, deterministic, q.requires_grad))
        o, lse = _FakeFlashAttention.apply(q, k, v, cu_q, max_q, scale)
        if not probs:
            return o
        return (o, lse, torch.empty(0)) if name == "flash_attn" else (o, lse)

    if name == "flash_attn":
        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False,
                                   window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                   deterministic=False, return_attn_probs=False,
                                   block_table=None):
            return attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          dropout_p, softmax_scale, causal, deterministic, return_attn_probs)
    else:
        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, seqused_q=None, seqused_k=None,
                                   softmax_scale=None, causal=False, qv=None, q_descale=None,
                                   k_descale=None, v_descale=None, window_size=(-1, -1),
                                   attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None,
                                   deterministic=False, sm_margin=0, return_attn_probs=False):
            return attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, 0.0,
                          softmax_scale, causal, deterministic, return_attn_probs)
    module = types.ModuleType(name)
    module.flash_attn_varlen_func = flash_attn_varlen_func
    return module


_FLASH_MODULES = ("sgkernels.kernels.flash", "sgkernels.kernels.flash.attention")


@pytest.fixture
def fake_flash(monkeypatch):
    """sgkernels.kernels.flash imported afresh over fake FA2 and FA3 modules, on a GPU of
    compute capability 8.0 (`capability` patched); yields (package, calls, set_libraries)
    where set_libraries("flash_attn", ...) keeps only those fakes importable."""
    calls = []
    monkeypatch.setattr(library_attention, "capability", lambda device: (8, 0))

    def set_libraries(*names):
        for name in ("flash_attn", "flash_attn_interface"):
            monkeypatch.setitem(sys.modules, name, _fake_library(name, calls)
                                if name in names else None)   # None: import raises
        for name in _FLASH_MODULES:
            sys.modules.pop(name, None)
        dispatch._import.cache_clear()
        return importlib.import_module("sgkernels.kernels.flash")

    yield set_libraries("flash_attn", "flash_attn_interface"), calls, set_libraries
    for name in _FLASH_MODULES:
        sys.modules.pop(name, None)
    dispatch._import.cache_clear()


def test_flash_forward_and_recomputed_backward(fake_flash, poison):
    """o, lse from the library's public call (lse requested), gradients from its autograd
    (a second forward on leaves that require grad), written into the slots of one poisoned
    [T, 3, H, Dh] buffer; q, k, v read in place from one [T, 3, H, Dh] qkv."""
    flash, calls, _ = fake_flash
    lengths, heads, dim, scale = [1, 0, 37, 20], 2, 64, 0.2
    cu = _cu(lengths)
    qkv = torch.randn(sum(lengths), 3, heads, dim)
    q, k, v = qkv.unbind(1)
    do = torch.randn(q.shape)
    o, lse = flash.varlen_attention_fwd(q, k, v, cu, 37, scale)
    o_ref, lse_ref = reference.varlen_attention_fwd(q, k, v, cu, 37, scale)
    assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref) and o.is_contiguous()
    dqkv = poison(torch.empty(qkv.shape))
    out = flash.varlen_attention_bwd(do, q, k, v, o, lse, cu, 37, scale, out=dqkv.unbind(1))
    assert all(g.data_ptr() == d.data_ptr() for g, d in zip(out, dqkv.unbind(1)))
    want = reference.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, 37, scale)
    assert torch.equal(dqkv, torch.stack(want, 1))
    fresh = flash.varlen_attention_bwd(do, q, k, v, o, lse, cu, 37, scale)
    assert all(torch.equal(g, w) and g.is_contiguous() for g, w in zip(fresh, want))
    # the newest installed library, deterministic as torch's flag says, grads by recomputation
    assert calls == [("flash_attn", False, False), ("flash_attn", False, True),
                     ("flash_attn", False, True)]
    torch.use_deterministic_algorithms(True)
    try:
        flash.varlen_attention_fwd(q, k, v, cu, 37, scale)
    finally:
        torch.use_deterministic_algorithms(False)
    assert calls[-1] == ("flash_attn", True, False)


def test_flash_picks_fa3_on_hopper_only(fake_flash, monkeypatch):
    flash, calls, set_libraries = fake_flash
    q = torch.randn(5, 1, 64)
    cu = _cu([5])
    for cap, library in (((9, 0), "flash_attn_interface"), ((8, 9), "flash_attn"),
                         ((10, 0), "flash_attn")):
        monkeypatch.setattr(library_attention, "capability", lambda device, cap=cap: cap)
        flash.varlen_attention_fwd(q, q, q, cu, 5, 0.1)
        assert calls[-1][0] == library
    flash = set_libraries("flash_attn_interface")        # FA3 alone: no library for sm 10.0
    assert flash.unsupported(q, 0.1) == "q must be a CUDA tensor, got a cpu tensor"
    monkeypatch.setattr(library_attention, "unsupported", lambda q, scale: None)
    assert "only FlashAttention-3" in flash.unsupported(q, 0.1)
    monkeypatch.setattr(library_attention, "capability", lambda device: (9, 0))
    assert flash.unsupported(q, 0.1) is None


def test_flash_import_error_names_the_extra(fake_flash):
    _, _, set_libraries = fake_flash
    with pytest.raises(ImportError, match=r"pip install 'sgkernels\[flash\]'"):
        set_libraries()


def test_empty_batch_and_unknown_lse_layout(fake_flash, monkeypatch):
    flash, calls, _ = fake_flash
    empty = torch.zeros(0, 2, 64)
    o, lse = flash.varlen_attention_fwd(empty, empty, empty, _cu([0]), 0, 0.1)
    assert o.shape == (0, 2, 64) and lse.shape == (2, 0) and lse.dtype == torch.float32
    grads = flash.varlen_attention_bwd(empty, empty, empty, empty, o, lse, _cu([0]), 0, 0.1)
    assert [g.shape for g in grads] == [empty.shape] * 3 and not calls
    flash_attention = sys.modules["sgkernels.kernels.flash.attention"]
    q = torch.randn(6, 2, 64)
    monkeypatch.setattr(flash_attention, "_attend",
                        lambda q, *args: (q.clone(), torch.zeros(q.shape[0], q.shape[1])))
    with pytest.raises(RuntimeError, match=r"flash-attn returned lse of shape \(6, 2\).*"
                                           r"expected \[H, T\] = \(2, 6\)"):
        flash.varlen_attention_fwd(q, q, q, _cu([6]), 6, 0.1)


@pytest.mark.interpret
def test_flash_through_the_packed_op_with_rope(fake_flash, monkeypatch, assert_matches):
    """ops.varlen_attention_qkv with rope under use_backend("flash") (its device rule patched to
    accept CPU tensors): q, k rotated by the Triton rope kernel before the library, d(qkv)
    rotated back, as the torch backend computes it; the backward runs inside the op's custom-op
    body, where the library's autograd must still record its graph."""
    flash, calls, _ = fake_flash
    monkeypatch.setattr(flash, "unsupported", lambda q, scale: None)
    lengths, heads, dim = [9, 1, 0, 30], 2, 72
    cu, total = _cu(lengths), sum(lengths)
    pos = torch.randint(0, 12, (total, 2), dtype=torch.int32)
    qkv = torch.randn(total, 3, heads, dim)
    results = []
    for backend in ("flash", "torch"):
        leaf = qkv.clone().requires_grad_()
        with ops.use_backend(backend):
            o = ops.varlen_attention_qkv(leaf, cu, 30, rope=(pos, 50.0))
            o.backward(torch.ones_like(o))
        results.append((o.detach(), leaf.grad))
    assert_matches(results[0][0], results[1][0], "o")
    assert_matches(results[0][1], results[1][1], "dqkv")
    assert [c[2] for c in calls] == [False, True]      # forward, then the recomputed forward


# --- torch-varlen: the real ops of this torch, bound on meta tensors ---------------------------

def test_torch_varlen_calls_bind_to_the_real_ops():
    """varlen_attn and the backward op take our arguments (names, order, types) and return
    o [T, H, Dh] and lse [H, T] fp32, the layout forward() checks: run on meta tensors, i.e.
    through the ops' fake kernels, so no GPU is needed."""
    torch_varlen = pytest.importorskip("sgkernels.kernels.torch_varlen",
                                       reason="this torch has no usable varlen_attn")
    q, k, v, do = (torch.empty(40, 2, 64, dtype=torch.bfloat16, device="meta") for _ in range(4))
    cu = torch.empty(4, dtype=torch.int32, device="meta")
    o, lse = torch_varlen.varlen_attention_fwd(q, k, v, cu, 30, 0.125)
    assert o.shape == q.shape and lse.shape == (2, 40) and lse.dtype == torch.float32
    grads = torch_varlen.varlen_attention_bwd(do, q, k, v, o, lse, cu, 30, 0.125)
    assert [g.shape for g in grads] == [q.shape] * 3


def test_torch_varlen_refuses_cpu_tensors_with_the_reason():
    pytest.importorskip("sgkernels.kernels.torch_varlen",
                        reason="this torch has no usable varlen_attn")
    q = torch.randn(4, 1, 64, dtype=torch.bfloat16)
    with ops.use_backend("torch-varlen"):
        with pytest.raises(ValueError, match="'torch-varlen' was forced for varlen_attention_fwd"
                                             ", which it cannot run: q must be a CUDA tensor"):
            ops.varlen_attention(q, q, q, _cu([4]), 4)


# --- on a GPU: every library backend vs an fp32 oracle -----------------------------------------

# bf16 at head dims 64 / 72 / 128 and fp16 at 64, per backend (`name`): the GPU selection of
# benchmarks/gpu_check.sh keeps every bf16 case and one fp16 case per (test, name)
CASES = [pytest.param(name, dtype, dim, id=f"{name}-{str(dtype)[6:]}-{dim}")
         for name in LIBRARIES
         for dtype, dim in ((torch.bfloat16, 64), (torch.bfloat16, 72), (torch.bfloat16, 128),
                            (torch.float16, 64))]


def _library(name, q, scale):
    """The backend module, or a skip that says why it cannot run here."""
    module, error = dispatch._import(name)
    if module is None:
        pytest.skip(f"backend {name!r} is not installed: {error}")
    reason = module.unsupported(q, scale)
    if reason is not None:
        pytest.skip(f"backend {name!r} cannot run here: {reason}")
    return module


def _error(got, want):
    return (got.float() - want).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("name, dtype, dim", CASES)
def test_gpu_library_matches_fp32_oracle(name, dtype, dim, poisoned_empty):
    """o, dQ, dK, dV within 3x the error of the same-dtype torch backend (which rounds only its
    outputs) plus a few ulps of an fp32 oracle, lse within 1e-3; segments of lengths 1 and 0,
    odd and several tiles long; outputs poisoned (NaN) until written."""
    lengths, heads = [1, 0, 37, 130, 64, 255], 2
    q, k, v, do = _inputs(lengths, heads, dim, dtype, "cuda", seed=dim)
    cu, top, scale = _cu(lengths, "cuda"), max(lengths), dim ** -0.5
    module = _library(name, q, scale)
    ulp = torch.finfo(dtype).eps
    fp32 = [t.float() for t in (q, k, v, do)]
    o32, lse32 = reference.varlen_attention_fwd(*fp32[:3], cu, top, scale)
    grads32 = reference.varlen_attention_bwd(fp32[3], *fp32[:3], o32, lse32, cu, top, scale)
    o_ref, lse_ref = reference.varlen_attention_fwd(q, k, v, cu, top, scale)
    grads_ref = reference.varlen_attention_bwd(do, q, k, v, o_ref, lse_ref, cu, top, scale)
    o, lse = module.varlen_attention_fwd(q, k, v, cu, top, scale)
    grads = module.varlen_attention_bwd(do, q, k, v, o, lse, cu, top, scale)
    assert _error(lse, lse32) <= 1e-3
    for what, got, ref, want in zip(("o", "dq", "dk", "dv"), (o, *grads), (o_ref, *grads_ref),
                                    (o32, *grads32)):
        assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous(), what
        bound = 3 * _error(ref, want) + 4 * ulp * want.abs().max().item()
        assert _error(got, want) <= bound, (what, _error(got, want), bound)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LIBRARIES)
def test_gpu_packed_op_with_rope_through_dispatch(name):
    """ops.varlen_attention_qkv with RoPE under use_backend(name) vs the torch backend in fp32:
    q, k, v read from one qkv, the rotation pre-pass, d(qkv) written as one buffer."""
    lengths, heads, dim = [5, 0, 130, 64], 4, 64
    total = sum(lengths)
    cu = _cu(lengths, "cuda")
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(total, 3, heads, dim, generator=gen).to("cuda", torch.bfloat16)
    pos = torch.randint(0, 16, (total, 2), generator=gen, dtype=torch.int32).to("cuda")
    _library(name, qkv[:, 0], dim ** -0.5)
    do = torch.randn(total, heads, dim, generator=gen).to("cuda", torch.bfloat16)
    results = {}
    for backend, dtype in ((name, torch.bfloat16), ("torch", torch.float32),
                           ("torch", torch.bfloat16)):
        leaf = qkv.to(dtype).clone().requires_grad_()
        with ops.use_backend(backend):
            o = ops.varlen_attention_qkv(leaf, cu, 130, rope=(pos, 100.0))
            o.backward(do.to(dtype))
        results[backend, dtype] = (o.detach(), leaf.grad)
    ulp = torch.finfo(torch.bfloat16).eps
    mine, want, ref = (results[key] for key in ((name, torch.bfloat16), ("torch", torch.float32),
                                                ("torch", torch.bfloat16)))
    for what, got, w, r in zip(("o", "dqkv"), mine, want, ref):
        bound = 3 * _error(r, w) + 4 * ulp * w.abs().max().item()
        assert _error(got, w) <= bound, (what, _error(got, w), bound)


@pytest.mark.gpu
def test_gpu_automatic_choice_follows_the_documented_rule():
    """fp32 and head dim 72 stay on Triton; bf16 at head dim 64 takes the first library of
    LIBRARY_ORDER that runs here (Triton when none does)."""
    if INTERPRETING:
        pytest.skip("needs compiled Triton kernels (TRITON_INTERPRET=0)")
    q64, q72 = (torch.zeros(8, 2, d, device="cuda", dtype=torch.bfloat16) for d in (64, 72))
    assert dispatch.attention_backend_for("varlen_attention_fwd", q64.float(), 0.1) == "triton"
    assert dispatch.attention_backend_for("varlen_attention_fwd", q72, 0.1) == "triton"
    for fn_name, order in dispatch.LIBRARY_ORDER.items():
        runs = [n for n in order if dispatch._import(n)[0] is not None
                and dispatch._import(n)[0].unsupported(q64, 0.1) is None]
        assert dispatch.attention_backend_for(fn_name, q64, 0.1) == (runs or ["triton"])[0]


def test_flash_is_optional_here():
    """Without flash-attn (this machine), forcing it names the pip extra."""
    if any(importlib.util.find_spec(m) for m in ("flash_attn", "flash_attn_interface")):
        pytest.skip("FlashAttention is installed here")
    q = torch.randn(4, 1, 64)
    with ops.use_backend("flash"):
        with pytest.raises(ImportError, match=r"backend 'flash' was forced .*"
                                              r"pip install 'sgkernels\[flash\]'"):
            ops.varlen_attention(q, q, q, _cu([4]), 4)
