"""Triton backend of sgkernels.ops (forward and backward of every op), one file per op.

Exports the backend functions of docs/contracts.md and `static_specs()`, the ahead-of-time
compile specifications that benchmarks/static_check.py checks for sm_90a. Shared pieces:
launch.py (interpreter switch, launch configs, tile grids, static specs) and segments.py
(deterministic segment and column sums of the backward kernels); attention.py launches the
kernels of attention_fwd.py and attention_bwd.py.
"""
from . import attention, norm, residual, rope, route_norm, routing, segments, swiglu
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
    "route_scatter_bwd", "route_scatter_fwd", "static_specs", "swiglu_bwd", "swiglu_fwd",
    "varlen_attention_bwd", "varlen_attention_fwd",
]

_MODULES = (norm, route_norm, residual, segments, swiglu, routing, rope, attention)


def static_specs():
    """All kernels' (name, ASTSource, compile options) for the sm_90a static check."""
    return [spec for module in _MODULES for spec in module.static_specs()]
