"""varlen_attention for the torch-varlen backend: torch.nn.attention.varlen, PyTorch's own build
of FlashAttention-2 (no extra package); math: sgkernels.ops.attention; supported calls, RoPE and
gradient buffers: kernels/library_attention.py.

Forward: varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale,
return_aux=AuxRequest(lse=True)) -> (o, lse [H, T] fp32, natural log).
Backward: torch.ops.torch_attn._varlen_attn_backward, the autograd-free op that varlen_attn's
own autograd formula calls, on the saved o and lse: nothing is recomputed. (varlen_attn's
autograd cannot serve here: it is a custom op's registered formula, and those record no graph
inside another custom op's body, where sgkernels' backends run.) Dropout is 0, so the op's
random-state argument is a zero placeholder, as varlen_attn's forward itself returns it.

Needs a torch whose varlen_attn and backward op take `scale`; with an older one this module
fails to import and says so.
"""
import inspect

import torch

from .. import library_attention

try:
    from torch.nn.attention.varlen import AuxRequest, varlen_attn
except ImportError as err:
    raise ImportError(f"the torch-varlen backend needs torch.nn.attention.varlen, which torch "
                      f"{torch.__version__} lacks") from err

_BACKWARD = torch.ops.torch_attn._varlen_attn_backward   # registered by torch.nn.attention.varlen
if ("scale" not in inspect.signature(varlen_attn).parameters
        or "scale" not in {a.name for a in _BACKWARD.default._schema.arguments}):
    raise ImportError(f"the torch-varlen backend needs a varlen_attn that takes scale; torch "
                      f"{torch.__version__}'s does not")

unsupported = library_attention.unsupported


def _attend(q, k, v, cu_seqlens, max_seqlen, scale):
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                       return_aux=AuxRequest(lse=True), scale=scale)


def _grads(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale):
    no_dropout = torch.zeros(2, dtype=torch.uint64, device=q.device)   # rng state, unused
    return _BACKWARD(do, q, k, v, o, lse, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                     False, no_dropout, scale=scale)


def varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale, rope=None):
    return library_attention.forward("torch varlen_attn", _attend, q, k, v, cu_seqlens,
                                     max_seqlen, scale, rope)


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, rope=None,
                         out=None):
    return library_attention.backward(_grads, do, q, k, v, o, lse, cu_seqlens, max_seqlen,
                                      scale, rope, out)
