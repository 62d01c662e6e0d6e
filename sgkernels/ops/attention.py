"""Variable-length (packed) non-causal attention: each segment of cu_seqlens attends to itself
(math: the docstring of varlen_attention).

Two entry points:
    varlen_attention(q, k, v, ...)           q, k, v [T, H, Dh], each with any token stride
    varlen_attention_qkv(qkv, ..., rope)     qkv [T, 3, H, Dh], the output of a qkv projection
The packed one reads q, k, v in place and returns d(qkv) as ONE [T, 3, H, Dh] tensor written
by the backward kernels, so neither the unbind of the projection nor its gradient (a stack)
copies anything; rope=(pos, theta) applies axial RoPE (ops.rope_axial) to q and k inside the op
(no rotated copy in autograd's graph; the backward rotates dq, dk back). Inputs are copied only
when their head and feature dims are not dense (strides (·, Dh, 1)).

Roofline per call, T tokens, H heads, head dim Dh, segment lengths L_i (S̄ = Σ L_i² / T):
    fwd FLOPs 4·T·S̄·H·Dh,  bwd FLOPs 2.5× that (10·T·S̄·H·Dh)
    fwd bytes e·4·T·H·Dh + 4·T·H (lse);  bwd bytes e·8·T·H·Dh + 4·T·H   (no N² memory in kernels)
    rope adds e·4·T·H·Dh to each (the Triton backend rotates q, k in a pre-pass; see
    kernels/triton/attention_fwd.py for why not inside the attention loops)
"""
import torch

from . import amp, dispatch, validate
from .custom import custom_op
from .rope import check_pos
from .rope import dense_heads as _dense_heads


def _rope(pos, theta):
    """The backends' optional rope argument: ((pos, theta),) or nothing."""
    return () if pos is None else ((pos, theta),)


# --- q, k, v as three tensors -----------------------------------------------------------------

@custom_op("sgkernels::varlen_attention")
def _varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    validate.cu_seqlens_values("varlen_attention", cu_seqlens, q.shape[0], max_seqlen)
    fn = dispatch.get_attention("varlen_attention_fwd", q, scale)
    return fn(q, k, v, cu_seqlens, max_seqlen, scale)


def _outputs_like(q):
    """(o [T, H, Dh] contiguous, lse [H, T] fp32): what every backend returns."""
    return q.new_empty(q.shape), q.new_empty(q.shape[1], q.shape[0], dtype=torch.float32)


@_varlen_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return _outputs_like(q)


@custom_op("sgkernels::varlen_attention_backward")
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
    fn = dispatch.get_attention("varlen_attention_bwd", q, scale)
    return fn(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale)


@_varlen_attention_backward.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale
    ctx.set_materialize_grads(False)   # lse has no gradient: no zeros tensor for it


def _grad(ctx, do, _dlse):
    if do is None:
        return None, None, None, None, None, None
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _varlen_attention_backward(
        _dense_heads(do), q, k, v, o, lse, cu_seqlens, ctx.max_seqlen, ctx.scale
    )
    return dq, dk, dv, None, None, None


_varlen_attention.register_autograd(_grad, setup_context=_setup)


# --- q, k, v packed as one [T, 3, H, Dh] tensor ---------------------------------------------

@custom_op("sgkernels::varlen_attention_qkv")
def _varlen_attention_qkv(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
    pos: torch.Tensor | None, theta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    validate.cu_seqlens_values("varlen_attention_qkv", cu_seqlens, qkv.shape[0], max_seqlen)
    q, k, v = qkv.unbind(1)
    fn = dispatch.get_attention("varlen_attention_fwd", q, scale)
    return fn(q, k, v, cu_seqlens, max_seqlen, scale, *_rope(pos, theta))


@_varlen_attention_qkv.register_fake
def _(qkv, cu_seqlens, max_seqlen, scale, pos, theta):
    return _outputs_like(qkv[:, 0])


@custom_op("sgkernels::varlen_attention_qkv_backward")
def _varlen_attention_qkv_backward(
    do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    cu_seqlens: torch.Tensor, max_seqlen: int, scale: float, pos: torch.Tensor | None,
    theta: float,
) -> torch.Tensor:
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    q, k, v = qkv.unbind(1)
    fn = dispatch.get_attention("varlen_attention_bwd", q, scale)
    fn(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, *_rope(pos, theta),
       out=dqkv.unbind(1))
    return dqkv


@_varlen_attention_qkv_backward.register_fake
def _(do, qkv, o, lse, cu_seqlens, max_seqlen, scale, pos, theta):
    return qkv.new_empty(qkv.shape)


def _setup_qkv(ctx, inputs, output):
    qkv, cu_seqlens, max_seqlen, scale, pos, theta = inputs
    ctx.save_for_backward(qkv, output[0], output[1], cu_seqlens, pos)
    ctx.max_seqlen, ctx.scale, ctx.theta = max_seqlen, scale, theta
    ctx.set_materialize_grads(False)


def _grad_qkv(ctx, do, _dlse):
    if do is None:
        return None, None, None, None, None, None
    qkv, o, lse, cu_seqlens, pos = ctx.saved_tensors
    dqkv = _varlen_attention_qkv_backward(_dense_heads(do), qkv, o, lse, cu_seqlens,
                                          ctx.max_seqlen, ctx.scale, pos, ctx.theta)
    return dqkv, None, None, None, None, None


_varlen_attention_qkv.register_autograd(_grad_qkv, setup_context=_setup_qkv)


# --- public functions -------------------------------------------------------------------------

def _check_common(op, ref, cu_seqlens, max_seqlen, scale):
    validate.index(op, "cu_seqlens", cu_seqlens, "q" if op == "varlen_attention" else "qkv", ref,
                   dtypes=(torch.int32,))
    if cu_seqlens.shape[0] < 1:
        raise ValueError(f"{op}: cu_seqlens must have shape [S+1] with S >= 0, got shape (0,)")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 0:
        raise ValueError(f"{op}: max_seqlen must be a non-negative int, got {max_seqlen!r}")
    return ref.shape[-1] ** -0.5 if scale is None else float(scale)


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Non-causal attention within each segment of a packed batch.

    Segment i holds tokens cu_seqlens[i] .. cu_seqlens[i+1] − 1. Per segment and head, with
    Q, K, V [L, Dh] its rows and s = scale:
        S = s · Q Kᵀ,   lse = logsumexp_row(S) (fp32),   P = exp(S − lse),   O = P V
    Gradients, with D = rowsum(dO ∘ O):
        dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − D),   dQ = s · dS K,   dK = s · dSᵀ Q
    Softmax statistics and accumulation in fp32; no [L, L] matrix is stored.

    Args:
        q: [T, H, Dh] fp32, fp16 or bf16, on CPU or CUDA (cast to the autocast dtype under
            torch.autocast).
        k, v: [T, H, Dh] in q's dtype, on q's device. q, k, v are read in place with any token
            stride when their head and feature dims are dense (strides (·, Dh, 1)), copied
            otherwise.
        cu_seqlens: [S+1] int32 on q's device: 0, then the cumulative segment lengths up to T
            (non-decreasing).
        max_seqlen: int >= the longest segment.
        scale: the softmax scale s; None for Dh ** -0.5.

    Returns:
        o: [T, H, Dh] in q's dtype, on q's device (contiguous).

    Raises:
        TypeError: q, k, v or cu_seqlens not a tensor; q not fp32 / fp16 / bf16; k or v not
            in q's dtype; cu_seqlens not int32.
        ValueError: q not 3-D; k or v not q's shape; a tensor not on q's device; cu_seqlens
            not 1-D or empty; max_seqlen not an int >= 0; cu_seqlens not from 0 to T,
            decreasing, or with a segment longer than max_seqlen (checked on CPU, and on CUDA
            under SGKERNELS_DEBUG=1).
    """
    op = "varlen_attention"
    q, k, v = amp.to_autocast_dtype(q, k, v)
    validate.floating(op, "q", q)
    validate.ndim(op, "q", q, 3)
    for name, t in (("k", k), ("v", v)):
        validate.like(op, name, t, "q", q)
        validate.shape(op, name, t, q.shape, "[T, H, Dh] (the shape of q)")
    scale = _check_common(op, q, cu_seqlens, max_seqlen, scale)
    q, k, v = (_dense_heads(t) for t in (q, k, v))
    return _varlen_attention(q, k, v, cu_seqlens.contiguous(), max_seqlen, scale)[0]


def varlen_attention_qkv(qkv, cu_seqlens, max_seqlen, scale=None, rope=None):
    """varlen_attention of (q, k, v) = qkv.unbind(1), optionally with axial RoPE on q and k.

        o = varlen_attention(rope(q), rope(k), v, cu_seqlens, max_seqlen, scale),
        rope = rope_axial(·, pos, theta) when rope = (pos, theta), the identity when None
    q, k, v are read in place, the rotation happens inside the op (no rotated copy), and the
    gradient of qkv is ONE contiguous [T, 3, H, Dh] tensor written by the backward (no stack
    of dq, dk, dv), so a qkv projection's backward consumes it as is.

    Args:
        qkv: [T, 3, H, Dh] fp32, fp16 or bf16, on CPU or CUDA (e.g. a qkv projection
            [T, 3·H·Dh] viewed so; cast to the autocast dtype under torch.autocast).
        cu_seqlens, max_seqlen, scale: as in varlen_attention.
        rope: None, or (pos, theta) with pos [T, 2] int32, int64 or fp32 on qkv's device and
            theta a float, as in rope_axial (then Dh % 4 == 0).

    Returns:
        o: [T, H, Dh] in qkv's dtype, on qkv's device (contiguous).

    Raises:
        TypeError: qkv or cu_seqlens not a tensor; qkv not fp32 / fp16 / bf16; cu_seqlens not
            int32; with rope: pos not a tensor or not int32 / int64 / fp32.
        ValueError: qkv not [T, 3, H, Dh]; cu_seqlens and max_seqlen as in varlen_attention;
            with rope: Dh not divisible by 4, pos not [T, 2] or not on qkv's device.
    """
    op = "varlen_attention_qkv"
    (qkv,) = amp.to_autocast_dtype(qkv)
    validate.floating(op, "qkv", qkv)
    validate.ndim(op, "qkv", qkv, 4)
    if qkv.shape[1] != 3:
        raise ValueError(f"{op}: qkv must have shape [T, 3, H, Dh], got {tuple(qkv.shape)}")
    scale = _check_common(op, qkv, cu_seqlens, max_seqlen, scale)
    pos, theta = None, 10000.0
    if rope is not None:
        pos, theta = rope
        check_pos(op, qkv, pos, "qkv")
        pos, theta = pos.contiguous(), float(theta)
    return _varlen_attention_qkv(_dense_heads(qkv), cu_seqlens.contiguous(), max_seqlen, scale,
                                 pos, theta)[0]
