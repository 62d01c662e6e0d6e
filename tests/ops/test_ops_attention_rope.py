import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ops_oracle import compare

from sgkernels import ops
from sgkernels.ops import reference

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
    o, lse = reference.varlen_attention_fwd(q, k, v, cu, 5, 0.25)
    assert lse.shape == (2, sum(lengths)) and lse.dtype == torch.float32
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        scores = torch.einsum("ihd,jhd->hij", q[start:end], k[start:end]) * 0.25
        torch.testing.assert_close(lse[:, start:end], torch.logsumexp(scores, -1))
    do = torch.randn_like(o)
    grads = reference.varlen_attention_bwd(do, q, k, v, o, lse, cu, 5, 0.25)
    monkeypatch.setattr(reference, "_ATTN_CHUNK_ELEMS", 1)   # one segment per chunk
    o1, lse1 = reference.varlen_attention_fwd(q, k, v, cu, 5, 0.25)
    grads1 = reference.varlen_attention_bwd(do, q, k, v, o1, lse1, cu, 5, 0.25)
    torch.testing.assert_close((o1, lse1, *grads1), (o, lse, *grads))


def torch_rope_axial(x, pos, theta=10000.0):
    """Llama-style rotate_half RoPE applied separately to the row and column halves."""
    dim = x.shape[-1]
    half = dim // 2
    work = torch.promote_types(x.dtype, torch.float32)
    freqs = theta ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)
    outs = []
    for axis in range(2):
        angles = pos[:, axis].to(work)[:, None] * freqs.to(work)
        cos = torch.cat([angles.cos()] * 2, -1)[:, None].to(x.dtype)
        sin = torch.cat([angles.sin()] * 2, -1)[:, None].to(x.dtype)
        part = x[..., axis * half:(axis + 1) * half]
        x1, x2 = part.chunk(2, -1)
        outs.append(part * cos + torch.cat([-x2, x1], -1) * sin)
    return torch.cat(outs, -1)


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
    heads_first = reference._heads_first

    def counting(t, tok):
        calls.append(tuple(tok.shape))
        return heads_first(t, tok)

    monkeypatch.setattr(reference, "_heads_first", counting)
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
