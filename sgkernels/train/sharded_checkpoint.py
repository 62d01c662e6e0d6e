"""Sharded checkpoints of FSDP runs (torch.distributed.checkpoint, DCP), and their conversions.

Layout under OUT/checkpoints/ (next to the single-file checkpoints of DDP runs):

    0001000/          one DCP directory per checkpoint: each rank writes its shards of
                      "model", "optim" (FQN keyed) and "ema"; meta.pt holds the rest of a
                      training checkpoint (step, args: model_config, train, rng, world_size, ...)
    0001000.tmp/      a checkpoint being written
    latest            the name of the newest complete directory (atomic text file)

A step's directory becomes visible only when complete: every rank writes into the .tmp
directory, then rank 0 adds meta.pt, renames it (one atomic rename) and rewrites `latest`. A
process killed mid-write leaves a .tmp directory (removed at the next save or resume) and the
previous checkpoint untouched. DCP reshards on load, so a run resumes at any world size.

`export(path, out)` consolidates one into the single-file layout of model.checkpoint (model, ema,
opt, args, step) in one process, for `sample`, `eval` and DDP runs; `load_full(ckpt, ...)` goes
the other way: an FSDP run continues from a single-file checkpoint.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)

from sgkernels.model.checkpoint import make_checkpoint
from sgkernels.runtime.files import publish_dir, save_atomic, write_text_atomic

META = "meta.pt"
LATEST = "latest"
TMP = ".tmp"


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether `path` is a DCP checkpoint directory of this layout."""
    path = Path(path)
    return path.is_dir() and (path / META).exists() and (path / ".metadata").exists()


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete sharded checkpoint of a run's checkpoints/ folder, or None."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.exists():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    if not is_sharded(path):
        raise FileNotFoundError(f"{pointer} names {path.name}, which is not a complete sharded "
                                f"checkpoint")
    return path


def remove_partial(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the .tmp directories of writes that were killed (rank 0; all ranks wait)."""
    removed = []
    if _rank0() and Path(ckpt_dir).is_dir():
        for path in Path(ckpt_dir).glob(f"*{TMP}"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    _barrier()
    return removed


def _states(model, opt, ema) -> dict:
    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}


def save(ckpt_dir: str | os.PathLike, step: int, model, opt, ema, meta: dict) -> Path:
    """Write checkpoint `step` (a collective: every rank calls it); returns its directory."""
    ckpt_dir = Path(ckpt_dir)
    final, tmp = ckpt_dir / f"{step:07d}", ckpt_dir / f"{step:07d}{TMP}"
    if _rank0():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    dcp.save(_states(model, opt, ema), checkpoint_id=tmp)
    if _rank0():
        save_atomic({"step": step, "args": meta}, tmp / META)
        publish_dir(tmp, final)                         # replaces a rerun's same step
        write_text_atomic(ckpt_dir / LATEST, final.name + "\n")
    _barrier()
    return final


def read_meta(path: str | os.PathLike) -> dict:
    """{"step", "args"} of a sharded checkpoint directory."""
    if not is_sharded(path):
        raise FileNotFoundError(f"{path}: not a sharded checkpoint directory (expected "
                                f"{META} and .metadata written by an FSDP run)")
    return torch.load(Path(path) / META, map_location="cpu", weights_only=True)


def load(path: str | os.PathLike, model, opt, ema) -> dict:
    """Load a sharded checkpoint into the (sharded) model, optimizer and EMA at this world size;
    returns its meta {"step", "args"}."""
    meta = read_meta(path)
    states = _states(model, opt, ema)
    dcp.load(states, checkpoint_id=Path(path))
    set_state_dict(model, opt, model_state_dict=states["model"],
                   optim_state_dict=states["optim"])
    ema.load_state_dict(states["ema"])
    return meta


def _fqn_optim_state(opt_state: dict, names: list[str]) -> dict:
    """A torch optimizer state dict (parameters by index) keyed by parameter name instead."""
    state = {names[i]: s for i, s in opt_state["state"].items()}
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in opt_state["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_full(ckpt: dict, model, opt, ema) -> None:
    """Distribute a single-file checkpoint (model.checkpoint layout, loaded on every rank) over
    the sharded model, optimizer and EMA."""
    names = [n for n, _ in model.named_parameters()]
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, opt, model_state_dict=ckpt["model"],
                   optim_state_dict=_fqn_optim_state(ckpt["opt"], names), options=options)
    from torch.distributed.tensor import distribute_tensor

    shards = {}
    for name, shadow in ema.state_dict().items():
        full = ckpt["ema"][name].to(shadow.dtype)
        shards[name] = (distribute_tensor(full, shadow.device_mesh, shadow.placements)
                        if hasattr(shadow, "device_mesh") else full)
    ema.load_state_dict(shards)


def export(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Consolidate a sharded checkpoint into one single-file checkpoint at `out` (one process,
    no process group): the model, EMA and AdamW states in full."""
    from sgkernels.model import ModelConfig, RoutedDiT

    meta = read_meta(path)
    model = RoutedDiT(ModelConfig.from_dict(meta["args"]["model_config"]))
    train = meta["args"].get("train", {})
    opt = torch.optim.AdamW(model.parameters(), lr=train.get("effective_lr", 1e-4),
                            betas=tuple(train.get("betas", (0.9, 0.999))),
                            weight_decay=train.get("weight_decay", 0.0))
    states = {"model": None, "optim": None,
              "ema": {k: torch.empty_like(v) for k, v in model.state_dict().items()}}
    states["model"], states["optim"] = get_state_dict(model, opt)
    with warnings.catch_warnings():        # "assuming ... load in a single process": intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(states, checkpoint_id=Path(path))
    set_state_dict(model, opt, model_state_dict=states["model"],
                   optim_state_dict=states["optim"])
    ckpt = make_checkpoint(model=model.state_dict(), ema=states["ema"], opt=opt.state_dict(),
                           args=meta["args"], step=int(meta["step"]))
    return save_atomic(ckpt, Path(out))
