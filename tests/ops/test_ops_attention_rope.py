import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_oracle import compare
from oracles import torch_rope_axial
from torch.utils._python_dispatch import TorchDispatchMode

from sgkernels import ops
from sgkernels.kernels.torch import attention as torch_attention
from sgkernels.ops.attention import varlen_attention_qkv

DTYPES = [torch.float32, torch.bfloat16]


def cu_seqlens(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def torch_varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """SDPA segment by segment."""
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
    return torch.cat(outs) if outs else torch.zeros_like(q)


def attention_inputs(lengths, heads, dim, gen=None):
    tokens = sum(lengths)
    return {
        "q": torch.randn(tokens, heads, dim, generator=gen),
        "k": torch.randn(tokens, heads, dim, generator=gen),
        "v": torch.randn(tokens, heads, dim, generator=gen),
        "cu_seqlens": cu_seqlens(lengths),
        "max_seqlen": max(lengths),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lengths,heads,dim",
    [([1], 1, 4), ([5, 5, 5], 2, 8), ([3, 0, 7, 1, 3], 2, 16), ([0, 4, 0], 1, 72), ([9, 2], 3, 64)],
)
def test_varlen_attention_matches_sdpa(lengths, heads, dim, dtype):
    torch.manual_seed(6)
    inputs = attention_inputs(lengths, heads, dim)
    compare(ops.varlen_attention, torch_varlen_attention, inputs, dtype, ("q", "k", "v"))


def test_varlen_attention_custom_scale():
    torch.manual_seed(7)
    inputs = {**attention_inputs([4, 6], 2, 8), "scale": 0.3}
    compare(ops.varlen_attention, torch_varlen_attention, inputs, torch.float32, ("q", "k", "v"))


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6).filter(lambda l: sum(l) > 0),
    heads=st.integers(1, 3),
    dim=st.sampled_from([4, 8, 12]),
)
def test_varlen_attention_hypothesis(lengths, heads, dim):
    gen = torch.Generator().manual_seed(sum(lengths) * 10 + heads)
    inputs = attention_inputs(lengths, heads, dim, gen)
    compare(ops.varlen_attention, torch_varlen_attention, inputs, torch.float32, ("q", "k", "v"))


def test_varlen_attention_lse_and_chunking(monkeypatch):
    """lse is the fp32 logsumexp of the scaled scores; chunked groups give the same result."""
    torch.manual_seed(8)
    lengths = [3, 5, 3, 3, 0, 5]
    q, k, v = (torch.randn(sum(lengths), 2, 8) for _ in range(3))
    cu = cu_seqlens(lengths)
    o, lse = torch_attention.varlen_attention_fwd(q, k, v, cu, 5, 0.25)
    assert lse.shape == (2, sum(lengths)) and lse.dtype == torch.float32
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        scores = torch.einsum("ihd,jhd->hij", q[start:end], k[start:end]) * 0.25
        torch.testing.assert_close(lse[:, start:end], torch.logsumexp(scores, -1))
    do = torch.randn_like(o)
    grads = torch_attention.varlen_attention_bwd(do, q, k, v, o, lse, cu, 5, 0.25)
    monkeypatch.setattr(torch_attention, "_ATTN_CHUNK_ELEMS", 1)   # one segment per chunk
    o1, lse1 = torch_attention.varlen_attention_fwd(q, k, v, cu, 5, 0.25)
    grads1 = torch_attention.varlen_attention_bwd(do, q, k, v, o1, lse1, cu, 5, 0.25)
    torch.testing.assert_close((o1, lse1, *grads1), (o, lse, *grads))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("tokens,heads,dim", [(1, 1, 4), (7, 3, 8), (16, 2, 64), (5, 1, 72)])
def test_rope_axial_matches_torch(tokens, heads, dim, dtype, pos_dtype):
    torch.manual_seed(9)
    pos = torch.randint(0, 32, (tokens, 2)).to(pos_dtype)
    inputs = {"x": torch.randn(tokens, heads, dim), "pos": pos, "theta": 100.0}
    compare(ops.rope_axial, torch_rope_axial, inputs, dtype, ("x",), keep=("pos",))


@settings(max_examples=15, deadline=None)
@given(tokens=st.integers(1, 10), heads=st.integers(1, 3), quarter=st.integers(1, 6))
def test_rope_axial_hypothesis(tokens, heads, quarter):
    gen = torch.Generator().manual_seed(tokens * 10 + quarter)
    inputs = {"x": torch.randn(tokens, heads, 4 * quarter, generator=gen),
              "pos": torch.randint(0, 64, (tokens, 2), generator=gen)}
    compare(ops.rope_axial, torch_rope_axial, inputs, torch.float32, ("x",))


def test_rope_axial_scores_depend_on_relative_position_only():
    torch.manual_seed(10)
    q, k = torch.randn(1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 16, dtype=torch.float64)

    def score(pq, pk):
        rq = ops.rope_axial(q.float(), torch.tensor([pq], dtype=torch.int32))
        rk = ops.rope_axial(k.float(), torch.tensor([pk], dtype=torch.int32))
        return (rq * rk).sum().item()

    assert score((3, 5), (1, 2)) == pytest.approx(score((10, 7), (8, 4)), abs=1e-5)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 1)), abs=1e-3)
    x = torch.randn(6, 2, 8)
    y = ops.rope_axial(x, torch.randint(0, 9, (6, 2)))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_reference_attention_batches_each_length_group(monkeypatch):
    """50 segments of 2 distinct lengths (and empty ones) -> one batched pass per length."""
    calls = []
    heads_first = torch_attention._heads_first

    def counting(t, tok):
        calls.append(tuple(tok.shape))
        return heads_first(t, tok)

    monkeypatch.setattr(torch_attention, "_heads_first", counting)
    lengths = [3, 5, 0] * 25
    inputs = attention_inputs(lengths, 2, 8)
    q = inputs["q"].requires_grad_()
    ops.varlen_attention(q, inputs["k"], inputs["v"], inputs["cu_seqlens"], 5).sum().backward()
    assert sorted(set(calls)) == [(25, 3), (25, 5)]
    assert len(calls) == 2 * (3 + 5)      # q, k, v forward; q, k, v, do, o backward


def test_non_contiguous_inputs():
    torch.manual_seed(12)
    q, k, v = (torch.randn(2, 9, 8).transpose(0, 1) for _ in range(3))   # [9, 2, 8] strided
    cu = cu_seqlens([4, 5])
    torch.testing.assert_close(ops.varlen_attention(q, k, v, cu, 5), torch_varlen_attention(q, k, v, cu, 5))
    pos = torch.randint(0, 9, (2, 9)).t()
    torch.testing.assert_close(ops.rope_axial(q, pos), torch_rope_axial(q, pos))


# --- packed q, k, v: ops.varlen_attention_qkv ---------------------------------------------------

def torch_varlen_attention_qkv(qkv, cu_seqlens, max_seqlen, pos=None, theta=100.0):
    """unbind, RoPE of q and k (when pos is given), SDPA segment by segment."""
    q, k, v = qkv.unbind(1)
    if pos is not None:
        q, k = torch_rope_axial(q, pos, theta), torch_rope_axial(k, pos, theta)
    return torch_varlen_attention(q, k, v, cu_seqlens, max_seqlen)


def sg_varlen_attention_qkv(qkv, cu_seqlens, max_seqlen, pos=None, theta=100.0):
    rope = None if pos is None else (pos, theta)
    return varlen_attention_qkv(qkv, cu_seqlens, max_seqlen, rope=rope)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("lengths,heads,dim", [([1], 1, 4), ([3, 0, 7, 1, 3], 2, 16),
                                               ([0, 4, 0], 1, 72), ([9, 2], 3, 8)])
def test_varlen_attention_qkv_matches_torch(lengths, heads, dim, rope, dtype):
    """Output and d(qkv) vs unbind + RoPE + SDPA (house rule: <= 2x the same-dtype error)."""
    gen = torch.Generator().manual_seed(sum(lengths) + dim)
    total = sum(lengths)
    inputs = {"qkv": torch.randn(total, 3, heads, dim, generator=gen),
              "cu_seqlens": cu_seqlens(lengths), "max_seqlen": max(lengths)}
    if rope:
        inputs["pos"] = torch.randint(0, 16, (total, 2), generator=gen, dtype=torch.int32)
    compare(sg_varlen_attention_qkv, torch_varlen_attention_qkv, inputs, dtype, ("qkv",),
            keep=("pos",))


def test_packed_equals_three_tensors_and_gradient_is_one_buffer():
    """varlen_attention_qkv == varlen_attention on qkv.unbind(1) (views, no copy), and d(qkv)
    is one contiguous [T, 3, H, Dh] tensor equal to the stacked dq, dk, dv."""
    torch.manual_seed(13)
    cu = cu_seqlens([5, 0, 1, 9])
    qkv = torch.randn(15, 3, 2, 8, requires_grad=True)
    out = varlen_attention_qkv(qkv, cu, 9)
    (dqkv,) = torch.autograd.grad(out, qkv, torch.ones_like(out))
    views = qkv.detach().requires_grad_().unbind(1)
    leaves = [t.detach().requires_grad_() for t in views]
    ref = ops.varlen_attention(*leaves, cu, 9)
    torch.autograd.backward(ref, torch.ones_like(ref))
    assert torch.equal(out, ref)
    assert dqkv.shape == qkv.shape and dqkv.is_contiguous()
    assert torch.equal(dqkv, torch.stack([t.grad for t in leaves], 1))


def test_varlen_attention_qkv_validation():
    qkv, cu = torch.randn(7, 3, 2, 8), cu_seqlens([3, 4])
    pos = torch.zeros(7, 2, dtype=torch.int32)
    rope = (pos, 1.0)
    cases = [
        (lambda: varlen_attention_qkv(qkv[:, :2], cu, 4), ValueError,
         r"qkv must have shape \[T, 3, H, Dh\]"),
        (lambda: varlen_attention_qkv(qkv[0], cu, 4), ValueError, r"qkv must be 4-D"),
        (lambda: varlen_attention_qkv(qkv.long(), cu, 4), TypeError, r"qkv must have dtype"),
        (lambda: varlen_attention_qkv(qkv, cu.long(), 4), TypeError,
         r"cu_seqlens must have dtype int32"),
        (lambda: varlen_attention_qkv(qkv, cu, 3), ValueError,
         r"max_seqlen must be >= the longest"),
        (lambda: varlen_attention_qkv(qkv, cu, 4, rope=(pos[:6], 1.0)), ValueError,
         r"pos must have shape \[T, 2\]"),
        (lambda: varlen_attention_qkv(qkv, cu, 4, rope=(pos.half(), 1.0)), TypeError,
         r"pos must have dtype"),
        (lambda: varlen_attention_qkv(qkv[..., :6], cu, 4, rope=rope), ValueError,
         r"divisible by 4"),
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match):
            fn()


def test_varlen_attention_qkv_under_autocast_keeps_float_positions():
    """qkv follows autocast; fp32 positions are not rounded to bf16 (a position of 301 is not
    representable in bf16)."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(12, 3, 2, 8, generator=g)
    cu, pos = cu_seqlens([5, 7]), torch.tensor([[301.0, 7.0]] * 12)
    expected = varlen_attention_qkv(qkv.bfloat16(), cu, 7, rope=(pos, 10.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = varlen_attention_qkv(qkv, cu, 7, rope=(pos, 10.0))
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_non_dense_heads_are_copied_then_correct():
    """A qkv whose head dim is not dense ([T, 3, Dh, H] transposed) takes the copy path."""
    torch.manual_seed(14)
    cu = cu_seqlens([4, 5])
    qkv = torch.randn(9, 3, 8, 2).transpose(2, 3)
    torch.testing.assert_close(varlen_attention_qkv(qkv, cu, 5),
                               torch_varlen_attention_qkv(qkv, cu, 5))


def _qkv_op_cases(grad):
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(7, 3, 2, 8, generator=g).requires_grad_(grad)
    pos = torch.randint(0, 5, (7, 2), generator=g, dtype=torch.int32)
    cu = cu_seqlens([3, 0, 4])
    return [(torch.ops.sgkernels.varlen_attention_qkv.default, (qkv, cu, 4, 0.3, None, 1e4)),
            (torch.ops.sgkernels.varlen_attention_qkv.default, (qkv, cu, 4, 0.3, pos, 50.0))]


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("case", [0, 1], ids=["plain", "rope"])
def test_opcheck_varlen_attention_qkv(case, grad):
    op, args = _qkv_op_cases(grad)[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("rope", [False, True])
def test_opcheck_varlen_attention_qkv_backward(rope):
    op, args = _qkv_op_cases(False)[int(rope)]
    o, lse = op(*args)
    qkv, cu, max_seqlen, scale, pos, theta = args
    torch.library.opcheck(torch.ops.sgkernels.varlen_attention_qkv_backward.default,
                          (torch.randn_like(o), qkv, o, lse, cu, max_seqlen, scale, pos, theta))


# --- no copies of q, k, v (or of their gradients) around the attention ---------------------------

class _BigAllocations(TorchDispatchMode):
    """Records every op whose non-view output has >= `numel` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        if not func.is_view and any(isinstance(o, torch.Tensor) and o.numel() >= self.numel
                                    for o in outs):
            self.ops.append(f"{func.namespace}::{func.overloadpacket.__name__}")
        return out


# ops allowed to produce q-sized tensors: the projections (and their gradients) and the
# attention ops themselves; anything else (clone, cat, stack, _to_copy, copy_, zeros + index
# put, ...) is a copy of q, k, v or of their gradients
_NOT_COPIES = {"aten::mm", "aten::addmm", "sgkernels::varlen_attention_qkv",
               "sgkernels::varlen_attention_qkv_backward"}


def _attention_setup(flavour):
    from sgkernels.model.blocks import Attention
    from sgkernels.model.tokens import TokenBatch

    torch.manual_seed(15)
    lengths, heads, dim = [16, 5, 0, 16], 2, 8
    total = sum(lengths)
    attn = Attention(heads * dim, heads, bias=flavour == "sit",
                     rope_theta=10000.0 if flavour == "llama" else None)
    h = torch.randn(total, heads * dim, requires_grad=True)
    seg = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                  torch.tensor(lengths))
    batch = TokenBatch(x=h.detach(), pos=torch.randint(0, 4, (total, 2), dtype=torch.int32),
                       seg=seg, cu_seqlens=cu_seqlens(lengths), max_seqlen=max(lengths),
                       cond=torch.zeros(len(lengths), 4))
    return attn, h, batch, total * heads * dim


def _copies(forward, h, q_numel):
    """Ops making q-sized tensors in one forward and one backward (outside the op bodies)."""
    fwd, bwd = _BigAllocations(q_numel), _BigAllocations(q_numel)
    with fwd:
        out = forward()
    grad = torch.ones_like(out)
    with bwd:
        out.backward(grad)
    return [op for op in fwd.ops + bwd.ops if op not in _NOT_COPIES]


def _unpacked_forward(attn, h, b):
    """The previous Attention.forward: unbind, RoPE copies, contiguous copies, three gradients."""
    q, k, v = attn.qkv(h).view(h.shape[0], 3, attn.heads, attn.head_dim).unbind(1)
    if attn.rope_theta is not None:
        q, k = ops.rope_axial(q, b.pos, attn.rope_theta), ops.rope_axial(k, b.pos, attn.rope_theta)
    o = ops.varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), b.cu_seqlens,
                             b.max_seqlen)
    return attn.proj(o.reshape(h.shape[0], -1))


def _backends():
    names = ["torch"]
    if os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("flavour", ["llama", "sit"])
def test_attention_module_makes_no_qkv_copy(flavour, backend):
    """Attention forward + backward: no op outside the projections and the attention op makes a
    tensor of q's size (the unbind is read in place, RoPE happens inside the op, d(qkv) is one
    buffer: no clone, stack or cat). The previous implementation, run through the same counter,
    makes a stack and 3 clones (sit: q, k, v .contiguous(); llama: v's, since ops.rope_axial
    reads the q, k views in place, + 2 RoPE outputs each way): the test can fail."""
    from sgkernels.kernels.triton import launch

    if backend == "triton" and not launch.INTERPRET:
        pytest.skip("Triton kernels were imported compiled; CPU tensors need the interpreter")
    attn, h, batch, q_numel = _attention_setup(flavour)
    with ops.use_backend(backend):
        assert _copies(lambda: attn(h, batch), h, q_numel) == []
        unpacked = _copies(lambda: _unpacked_forward(attn, h, batch), h, q_numel)
    clones = 1 if flavour == "llama" else 3
    assert unpacked.count("aten::clone") == clones and unpacked.count("aten::stack") == 1
    if flavour == "llama":
        assert unpacked.count("sgkernels::rope_axial") == 2
        assert unpacked.count("sgkernels::rope_axial_backward") == 2
    packed_out = attn(h, batch)
    with ops.use_backend("torch"):
        torch.testing.assert_close(packed_out, _unpacked_forward(attn, h, batch))


def test_varlen_attention_reads_strided_views_without_copies():
    """q, k, v = views of one [T, 3, H, Dh] tensor: the forward makes no copy; a q whose head dim
    is not dense (strides (16, 1, 2)) is copied once (the documented fallback)."""
    torch.manual_seed(16)
    cu, qkv = cu_seqlens([6, 3]), torch.randn(9, 3, 2, 8)
    sparse_q = qkv[:, 0].transpose(1, 2).contiguous().transpose(1, 2)
    for q, expected in ((qkv[:, 0], []), (sparse_q, ["aten::clone"])):
        counter = _BigAllocations(9 * 2 * 8)
        with counter:
            out = ops.varlen_attention(q, qkv[:, 1], qkv[:, 2], cu, 6)
        assert counter.ops == expected + ["sgkernels::varlen_attention"]
        torch.testing.assert_close(out, torch_varlen_attention(q, qkv[:, 1], qkv[:, 2], cu, 6))


def test_attention_module_compiles_fullgraph():
    """torch.compile(fullgraph=True) through Attention with RoPE, forward and backward."""
    attn, h, batch, _ = _attention_setup("llama")
    eager = attn(h, batch)
    (grad,) = torch.autograd.grad(eager.square().sum(), h)
    compiled = torch.compile(lambda x: attn(x, batch), backend="aot_eager", fullgraph=True)
    out = compiled(h)
    (grad_c,) = torch.autograd.grad(out.square().sum(), h)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad_c, grad)
