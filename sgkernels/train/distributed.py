"""Data-parallel set-up for `torchrun`: process group (gloo on CPU, nccl on CUDA) and rank info.

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
run is a single process. Each rank takes a contiguous slice of the global batch (draws.py);
gradients are averaged by DistributedDataParallel, so a k-rank step on k equal slices equals the
1-process step on the whole batch. Only rank 0 logs, samples and writes checkpoints.

Host-side agreements (stop flags, logged means) use a CPU group: the default group with gloo, an
extra gloo group next to nccl, so they never wait on the GPU.
"""
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False
    cpu_group: object = None        # gloo group for host values (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device


def setup(device: str | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1) or reuse one."""
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world, here = dist.get_rank(), dist.get_world_size(), False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        here = world > 1
        if here:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    group = None
    if world > 1 and dist.get_backend() != "gloo":
        group = dist.new_group(backend="gloo")   # every rank calls setup: collective is matched
    return DistInfo(rank, world, local, dev, here, group)


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
