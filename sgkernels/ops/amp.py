"""Behaviour of the ops under torch.autocast.

Like torch's own ops, the public wrappers cast their floating inputs before validation:
    varlen_attention, swiglu, rope_axial     to the autocast dtype (they follow a linear layer)
    rms_norm(_modulate), gated_residual,     to the dtype of x / base (the residual stream keeps
    route_scatter                            its precision; shift, scale, gate, y follow it)
The op bodies then run with autocast off (dispatch.get), so the backends see exactly the
dtypes of the op contract and keep their fp32 statistics.
"""
import torch


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")   # meta tensors (shape tracing) have none


def enabled(device):
    """Whether autocast is on for `device`'s type."""
    return device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type)


def to_autocast_dtype(*tensors):
    """Floating tensors cast to the active autocast dtype of their device (no-op without it);
    anything else is returned as is, for the op's validation to reject."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or not enabled(first.device):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if _floating(t) else t for t in tensors)


def like(ref, *tensors):
    """Floating tensors cast to ref's dtype under autocast (no-op without it)."""
    if not enabled(ref.device):
        return tensors
    return tuple(t.to(ref.dtype) if _floating(t) else t for t in tensors)


def _floating(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point()
