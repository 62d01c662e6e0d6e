"""Public drop-in torch ops of sgkernels (autograd, torch.compile and opcheck ready).

Each op is a `torch.library.custom_op` under the `sgkernels::` namespace with a fake (meta)
implementation and an autograd formula whose backward is itself a custom op. The op bodies call
the backend chosen by `sgkernels.ops.dispatch` (torch reference, Triton, CUDA; attention also
FlashAttention or torch's varlen_attn). Each op's docstring holds its math and its Args
(shapes, dtypes), Returns and Raises; docs/contracts.md the contract between the layers and the
backends.

    rms_norm(x, weight=None, eps=1e-6)
    rms_norm_modulate(x, weight, shift, scale, seg, eps=1e-6)
    gated_residual(x, y, gate, seg)
    swiglu(a, b=None)
    route_gather(x, idx), route_scatter(base, y, idx)
    route_gather_rms_norm_modulate(x, idx, weight, shift, scale, seg, eps=1e-6) -> (x[idx], y)
    varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale=None)
    varlen_attention_qkv(qkv, cu_seqlens, max_seqlen, scale=None, rope=None)   one d(qkv) buffer
    rope_axial(x, pos, theta=10000.0)
    use_backend(name)      context manager forcing "torch", "triton" or "cuda"; for
                           varlen_attention also "flash" or "torch-varlen" (ops/dispatch.py)
"""
from .attention import varlen_attention, varlen_attention_qkv
from .dispatch import use_backend
from .norm import rms_norm, rms_norm_modulate
from .residual import gated_residual
from .rope import rope_axial
from .route_norm import route_gather_rms_norm_modulate
from .routing import route_gather, route_scatter
from .swiglu import swiglu

__all__ = [
    "gated_residual",
    "rms_norm",
    "rms_norm_modulate",
    "rope_axial",
    "route_gather",
    "route_gather_rms_norm_modulate",
    "route_scatter",
    "swiglu",
    "use_backend",
    "varlen_attention",
    "varlen_attention_qkv",
]
