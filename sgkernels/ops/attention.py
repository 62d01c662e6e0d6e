"""Variable-length (packed) non-causal attention: each segment of cu_seqlens attends to itself.

Per segment and head, with Q, K, V [L, Dh] and scale s (default Dh^-1/2):
    S = s·QKᵀ, lse = logsumexp_row(S) (fp32, kept for the backward), P = exp(S − lse), O = PV
    dV = PᵀdO, dP = dO Vᵀ, D = rowsum(dO∘O), dS = P∘(dP − D), dQ = s·dS K, dK = s·dSᵀQ

Roofline per call, T tokens, H heads, head dim Dh, segment lengths L_i (S̄ = Σ L_i² / T):
    fwd FLOPs 4·T·S̄·H·Dh,  bwd FLOPs 2.5× that (10·T·S̄·H·Dh)
    fwd bytes e·4·T·H·Dh + 4·T·H (lse);  bwd bytes e·8·T·H·Dh + 4·T·H   (no N² memory in kernels)
"""
import torch

from . import amp, dispatch, validate


@torch.library.custom_op("sgkernels::varlen_attention", mutates_args=())
def _varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    validate.cu_seqlens_values("varlen_attention", cu_seqlens, q.shape[0], max_seqlen)
    return dispatch.get("varlen_attention_fwd", q.device)(q, k, v, cu_seqlens, max_seqlen, scale)


@_varlen_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)


@torch.library.custom_op("sgkernels::varlen_attention_backward", mutates_args=())
def _varlen_attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fn = dispatch.get("varlen_attention_bwd", q.device)
    return fn(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale)


@_varlen_attention_backward.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _grad(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _varlen_attention_backward(
        do.contiguous(), q, k, v, o, lse, cu_seqlens, ctx.max_seqlen, ctx.scale
    )
    return dq, dk, dv, None, None, None


_varlen_attention.register_autograd(_grad, setup_context=_setup)


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """softmax(scale·QKᵀ)V within each segment; q, k, v [T, H, Dh]; cu_seqlens [S+1] int32."""
    op = "varlen_attention"
    q, k, v = amp.to_autocast_dtype(q, k, v)
    validate.floating(op, "q", q)
    validate.ndim(op, "q", q, 3)
    for name, t in (("k", k), ("v", v)):
        validate.like(op, name, t, "q", q)
        validate.shape(op, name, t, q.shape, "[T, H, Dh] (the shape of q)")
    validate.index(op, "cu_seqlens", cu_seqlens, "q", q, dtypes=(torch.int32,))
    if cu_seqlens.shape[0] < 1:
        raise ValueError(f"{op}: cu_seqlens must have shape [S+1] with S >= 0, got shape (0,)")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 0:
        raise ValueError(f"{op}: max_seqlen must be a non-negative int, got {max_seqlen!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _varlen_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens.contiguous(), max_seqlen, scale
    )[0]
