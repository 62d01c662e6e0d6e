"""Fully sharded data parallel training (`--parallel fsdp`): PyTorch's FSDP2 on a RoutedDiT.

`shard(model, ...)` applies `torch.distributed.fsdp.fully_shard` to every transformer block
(encoder blocks, the MaskDiT decoder's blocks, the text refiner's layers), then to the root
module, so each rank holds 1/N of every parameter, gradient and AdamW state, and a block's
parameters are all-gathered just before it runs and freed after (forward and backward).
Mixed precision (CUDA with amp): bf16 parameters and compute, fp32 gradient reduce-scatter and
fp32 master weights (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`); on CPU (gloo)
everything stays fp32. The fused Llama route start calls `DiTBlock.modulation` outside the
block's forward, so that method is registered as an FSDP forward method (it gathers the block's
parameters itself: one extra all-gather of one block per route).

`ShardedEMA` keeps the EMA weights sharded exactly like the parameters (a DTensor per
parameter, same mesh and placements), so it also costs 4P/N bytes per rank, and updates them with
the same rule as `EMA` (ema.py) on the local shards.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from .ema import check_decay, decay_at


def single_process_group(device: torch.device) -> bool:
    """A one-rank process group (in-memory store) for FSDP without torchrun; True if it was
    created here (the caller destroys it), False when a group exists already."""
    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                            rank=0, world_size=1)
    return True


def destroy_single_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sharded_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own FSDP unit: transformer blocks and text refiner layers."""
    units = list(model.blocks)
    if model.decoder is not None:
        units += list(model.decoder.blocks)
    if model.text is not None:
        units += list(model.text.refiner)
    return units


def shard(model: nn.Module, bf16: bool) -> nn.Module:
    """fully_shard every block and the root in place; returns the model (now FSDP-managed)."""
    # the blocks return views (packed ops); nothing modifies a block's output in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if bf16 else MixedPrecisionPolicy()
    for unit in sharded_modules(model):
        fully_shard(unit, mp_policy=policy)
        if hasattr(unit, "modulation"):
            register_fsdp_forward_method(unit, "modulation")
    fully_shard(model, mp_policy=policy)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on every rank (a collective: every rank must call it); on one
    rank its tensors may share storage with the parameters."""
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v
            for k, v in model.state_dict().items()}


class ShardedEMA:
    """EMA of a sharded model: e <- d_s e + (1 - d_s) w on each rank's shards (ema.py's rule)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        self.decay, self.warmup = check_decay(decay), warmup
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0, skip: torch.Tensor | None = None) -> None:
        """Fold in the weights after optimizer step `step`; skip: 1.0 leaves the EMA as is."""
        decay = decay_at(self.decay, self.warmup, step)
        weight = 1.0 - decay if skip is None else (1.0 - skip.double()) * (1.0 - decay)
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if not shadow.is_floating_point():
                shadow.copy_(value)
                continue
            local = shadow.to_local() if hasattr(shadow, "to_local") else shadow
            src = value.to_local() if hasattr(value, "to_local") else value
            w = weight if isinstance(weight, float) else weight.to(local.dtype)
            local.lerp_(src.detach().to(local.dtype), w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sharded EMA weights (DTensors), keyed like the model's state dict."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:3]}")
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                shadow.copy_(state[name])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded EMA weights on every rank (a collective; see full_state_dict)."""
        return {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                for k, v in self.shadow.items()}
