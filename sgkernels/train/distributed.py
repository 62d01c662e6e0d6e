"""Data-parallel training under `torchrun`: the process group (runtime.device.setup_distributed)
plus a CPU group, and the few collectives the trainer needs.

Each rank takes a contiguous slice of the global batch (draws.py); gradients are averaged by
DistributedDataParallel, so a k-rank step on k equal slices equals the 1-process step on the
whole batch. Only rank 0 logs, samples and writes checkpoints.

Host-side agreements (stop flags, logged means) use a CPU group: the default group with gloo, an
extra gloo group next to nccl, so they never wait on the GPU.
"""
from dataclasses import replace

import torch
import torch.distributed as dist

from sgkernels.runtime.device import DistInfo, setup_distributed


def setup(device: str | None = None) -> DistInfo:
    """setup_distributed(device), with a gloo group for host values when the group is nccl."""
    info = setup_distributed(device)
    if info.enabled and dist.get_backend() != "gloo":
        # every rank calls setup: the collective new_group is matched
        info = replace(info, cpu_group=dist.new_group(backend="gloo"))
    return info


def cleanup(info: DistInfo) -> None:
    """Tear the group down together: a rank that destroys it while a peer is still working
    (rank 0 plotting the loss curve) can abort in gloo's transport threads."""
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_scalar(value: float, info: DistInfo) -> float:
    """Average a python float over ranks (for logging the global loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=info.cpu_group)
    return t.item() / info.world_size


def max_ints(values: list[int], info: DistInfo) -> list[int]:
    """Element-wise max over ranks of a few host ints (CPU group: no device sync)."""
    if not info.enabled:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when `flag` is True on some rank (so all ranks stop together)."""
    return bool(max_ints([int(flag)], info)[0])
