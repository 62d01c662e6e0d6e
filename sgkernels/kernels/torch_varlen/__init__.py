"""torch-varlen backend of sgkernels.ops: torch.nn.attention.varlen (PyTorch's FlashAttention-2)
for varlen_attention only (its _fwd and _bwd, CUDA fp16 / bf16; the other ops keep their
backends). Importing this package fails, saying why, when this torch's varlen_attn is missing
or takes no scale. `unsupported(q, scale)` says why a call cannot run here (None: it can), which
ops/dispatch.py asks before choosing it. One file per op, as in the other backends.
"""
from .attention import unsupported, varlen_attention_bwd, varlen_attention_fwd

__all__ = ["unsupported", "varlen_attention_bwd", "varlen_attention_fwd"]
