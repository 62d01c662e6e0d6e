"""varlen_attention for the flash backend: FlashAttention-3 (`flash_attn_interface`, Hopper) or
FlashAttention-2 (`flash_attn`: `pip install 'sgkernels[flash]'`); math: sgkernels.ops.attention;
supported calls, RoPE and gradient buffers: kernels/library_attention.py.

Library: FA3 on a GPU of compute capability 9.x when flash_attn_interface imports, else FA2
(compute capability >= 8.0), both through their public flash_attn_varlen_func.
Forward: flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
softmax_scale=scale, causal=False, return_attn_probs=True) -> (out, softmax_lse [H, T] fp32,
natural log; FA2 adds S_dmask, empty at dropout 0).
Backward: the libraries' autograd-free backward functions are private and change their
arguments between releases, so the gradients come from the public function's autograd (an
autograd.Function, which records a graph even inside a custom op's body): its forward again on
detached q, k, v, then torch.autograd.grad; the saved o and lse are not used. That is one more
forward (fwd + bwd ≈ 4.5 forward times instead of 3.5), which is why the automatic choice of
ops/dispatch.py prefers torch-varlen for the backward.
deterministic = torch.are_deterministic_algorithms_enabled() (FA2 otherwise accumulates dQ with
atomics, so gradients may differ in the last bits from run to run).
"""
import importlib
import inspect

import torch

from .. import library_attention


def _varlen_func(module):
    """flash_attn_varlen_func of `module` when it imports and can return softmax_lse
    (return_attn_probs), else None."""
    try:
        func = importlib.import_module(module).flash_attn_varlen_func
    except (ImportError, AttributeError):   # flash_attn hides a missing CUDA module this way
        return None
    return func if "return_attn_probs" in inspect.signature(func).parameters else None


FA3 = _varlen_func("flash_attn_interface")
FA2 = _varlen_func("flash_attn")
if FA2 is None and FA3 is None:
    raise ImportError("the flash backend needs FlashAttention: pip install 'sgkernels[flash]' "
                      "(flash-attn, FA2), or FlashAttention-3's flash_attn_interface (Hopper)")


def _library(q):
    """flash_attn_varlen_func for q's GPU: FA3 on compute capability 9.x, else FA2 (or None)."""
    if FA3 is not None and library_attention.capability(q.device)[0] == 9:
        return FA3
    return FA2


def unsupported(q, scale):
    """Why this backend cannot run the attention of q with this scale, or None."""
    reason = library_attention.unsupported(q, scale)
    if reason is None and _library(q) is None:
        reason = ("only FlashAttention-3 (flash_attn_interface) is installed, which runs on "
                  "compute capability 9.x; for this GPU: pip install 'sgkernels[flash]'")
    return reason


def _attend(q, k, v, cu_seqlens, max_seqlen, scale, lse=True):
    """(o, lse) of the library's attention (lse False: o alone)."""
    result = _library(q)(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                         softmax_scale=scale, causal=False,
                         deterministic=torch.are_deterministic_algorithms_enabled(),
                         return_attn_probs=lse)
    return (result[0], result[1]) if lse else result


def _grads(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale):
    """(dq, dk, dv) by the library's autograd: its forward again, then its backward."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        again = _attend(*leaves, cu_seqlens, max_seqlen, scale, lse=False)
        return torch.autograd.grad(again, leaves, do)


def varlen_attention_fwd(q, k, v, cu_seqlens, max_seqlen, scale, rope=None):
    return library_attention.forward("flash-attn", _attend, q, k, v, cu_seqlens, max_seqlen,
                                     scale, rope)


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, rope=None,
                         out=None):
    return library_attention.backward(_grads, do, q, k, v, o, lse, cu_seqlens, max_seqlen,
                                      scale, rope, out)
