"""Input checks shared by the public ops.

Errors name the op, the argument and what was expected: TypeError for dtypes, ValueError for
shapes, devices and values. Metadata checks (dtype, shape, device) are free and always run, in
the public wrappers, so torch.compile traces them as guards. Value checks (cu_seqlens monotonic,
seg / idx in range) need the data; they run inside the custom-op bodies, always for CPU tensors
and for CUDA tensors only with SGKERNELS_DEBUG=1 (they force a device sync). A tensor whose
values passed a check is not checked again until it changes (runtime.memo): the seg and
cu_seqlens of a packed batch serve every block of a forward.
"""
import os

import torch

from sgkernels.runtime.memo import TensorMemo

_passed = TensorMemo()   # (tensor, check) -> True once the check passed on its values

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def _fmt(dtypes):
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def floating(op, name, t):
    """`t` is an fp32/fp16/bf16 tensor."""
    tensor(op, name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have dtype {_fmt(FLOAT_DTYPES)}, got {t.dtype}")


def like(op, name, t, ref_name, ref):
    """`t` is a tensor with the dtype and device of `ref`."""
    tensor(op, name, t)
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    same_device(op, name, t, ref_name, ref)


def same_device(op, name, t, ref_name, ref):
    if t.device != ref.device:
        raise ValueError(
            f"{op}: {name} must be on the device of {ref_name} ({ref.device}), got {t.device}"
        )


def index(op, name, t, ref_name, ref, dtypes=INDEX_DTYPES):
    """`t` is a 1-D integer tensor of one of `dtypes` on the device of `ref`."""
    tensor(op, name, t)
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype {_fmt(dtypes)}, got {t.dtype}")
    same_device(op, name, t, ref_name, ref)
    ndim(op, name, t, 1)


def ndim(op, name, t, n):
    if t.dim() != n:
        raise ValueError(f"{op}: {name} must be {n}-D, got shape {tuple(t.shape)}")


def shape(op, name, t, expected, what):
    """`t.shape == expected`; `what` spells the expectation symbolically, e.g. "[S, D]"."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape {what} = {tuple(expected)}, got {tuple(t.shape)}"
        )


def wants_values(t):
    """Whether data-dependent checks should run for tensors like `t` (no sync on CUDA by default)."""
    return t.device.type != "cuda" or os.environ.get("SGKERNELS_DEBUG") == "1"


def cu_seqlens_values(op, cu_seqlens, total, max_seqlen):
    """cu_seqlens starts at 0, ends at `total`, is non-decreasing, and no segment exceeds max_seqlen."""
    if wants_values(cu_seqlens):
        _passed.get(cu_seqlens, ("cu_seqlens", total, max_seqlen),
                    lambda: _cu_seqlens_values(op, cu_seqlens, total, max_seqlen))


def _cu_seqlens_values(op, cu_seqlens, total, max_seqlen):
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0 or last != total:
        raise ValueError(
            f"{op}: cu_seqlens must start at 0 and end at T = {total}, got {first} ... {last}"
        )
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if lengths.numel() and bool((lengths < 0).any()):
        raise ValueError(f"{op}: cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    if lengths.numel() and int(lengths.max()) > max_seqlen:
        raise ValueError(
            f"{op}: max_seqlen must be >= the longest segment ({int(lengths.max())}), "
            f"got {max_seqlen}"
        )
    return True


def seg_values(op, seg, num_segments):
    """seg lies in [0, num_segments) and is non-decreasing."""
    if wants_values(seg) and seg.numel():
        _passed.get(seg, ("seg", num_segments), lambda: _seg_values(op, seg, num_segments))


def _seg_values(op, seg, num_segments):
    lo, hi = int(seg.min()), int(seg.max())
    if lo < 0 or hi >= num_segments:
        raise ValueError(
            f"{op}: seg values must lie in [0, S) with S = {num_segments}, got range [{lo}, {hi}]"
        )
    if bool((seg[1:] < seg[:-1]).any()):
        raise ValueError(f"{op}: seg must be non-decreasing (tokens grouped by segment)")
    return True


def idx_values(op, idx, num_rows):
    """idx lies in [0, num_rows) and has no repeated entry."""
    if wants_values(idx) and idx.numel():
        _passed.get(idx, ("idx", num_rows), lambda: _idx_values(op, idx, num_rows))


def _idx_values(op, idx, num_rows):
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= num_rows:
        raise ValueError(
            f"{op}: idx values must lie in [0, {num_rows}), got range [{lo}, {hi}]"
        )
    ordered = torch.sort(idx).values
    if bool((ordered[1:] == ordered[:-1]).any()):
        raise ValueError(f"{op}: idx must not repeat a row")
    return True
