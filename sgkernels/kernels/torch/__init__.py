"""Torch backend of sgkernels.ops: plain PyTorch, no autograd, and the oracle of every kernel.

Exports the backend functions of docs/contracts.md ("Backends"), one file per op; the Triton and
CUDA backends export the same functions with the same signatures. Each op's math is stated in
its public op (sgkernels.ops.<op>) and executed here. Inputs arrive validated, contiguous
(swiglu: last dim contiguous; attention: any token strides) and on one device. Statistics and
accumulation run in fp32; outputs are cast to the input dtype. Segment reductions (dshift,
dscale, dgate) are deterministic sorted-segment sums (segments.py), never float atomics.
"""
from .attention import varlen_attention_bwd, varlen_attention_fwd
from .norm import rms_norm_bwd, rms_norm_fwd, rms_norm_modulate_bwd, rms_norm_modulate_fwd
from .residual import gated_residual_bwd, gated_residual_fwd
from .rope import rope_axial_bwd, rope_axial_fwd
from .route_norm import route_gather_rms_norm_modulate_bwd, route_gather_rms_norm_modulate_fwd
from .routing import route_gather_fwd, route_scatter_bwd, route_scatter_fwd
from .swiglu import swiglu_bwd, swiglu_fwd

__all__ = [
    "gated_residual_bwd", "gated_residual_fwd", "rms_norm_bwd", "rms_norm_fwd",
    "rms_norm_modulate_bwd", "rms_norm_modulate_fwd", "rope_axial_bwd", "rope_axial_fwd",
    "route_gather_fwd", "route_gather_rms_norm_modulate_bwd", "route_gather_rms_norm_modulate_fwd",
    "route_scatter_bwd", "route_scatter_fwd", "swiglu_bwd", "swiglu_fwd",
    "varlen_attention_bwd", "varlen_attention_fwd",
]
