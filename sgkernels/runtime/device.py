"""--device resolution and the process group of a `torchrun` launch.

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run
is a single process. With WORLD_SIZE > 1 the group is initialised here (nccl on CUDA, gloo on
CPU) unless one exists already, and every rank on CUDA takes the GPU of its LOCAL_RANK.
"""
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

DEVICE_TYPES = ("cpu", "cuda")


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


def resolve_device(name: str | None, arg: str = "--device") -> torch.device:
    """None / "auto" -> cuda when available, else cpu; otherwise cpu, cuda or cuda:N as a
    torch.device that exists here. Bad values raise ValueError naming `arg`."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{arg}: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{arg} {name!r}: no CUDA device is available here "
                             "(torch.cuda.is_available() is False; use cpu)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{arg} {name!r}: only {count} CUDA device(s) here")
    return device


def setup_distributed(name: str | None = None, arg: str = "--device") -> DistInfo:
    """Rank, world size and device of this process (resolve_device(name, arg)); initialises the
    process group when launched by torchrun with WORLD_SIZE > 1, or reuses an existing one. On
    CUDA with several ranks each rank takes cuda:LOCAL_RANK; a CUDA device with an index
    becomes the current one."""
    device = resolve_device(name, arg)
    if dist.is_available() and dist.is_initialized():
        rank, world, here = dist.get_rank(), dist.get_world_size(), False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        here = world > 1
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if here:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device, here)
