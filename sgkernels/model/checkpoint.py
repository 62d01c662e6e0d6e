"""Loading a RoutedDiT from a training checkpoint.

Checkpoint layout (DiT/nanoGPT style), written by the trainer with torch.save:
    {"model": state_dict, "ema": state_dict, "opt": optimizer state, "args": dict, "step": int}
where args["model_config"] = ModelConfig.to_dict(). Loaded with weights_only=True, so args must
hold only plain Python values (str, int, float, bool, None, lists, dicts).
"""
from __future__ import annotations

import os

import torch

from .config import ModelConfig
from .dit import RoutedDiT

REQUIRED_KEYS = ("model", "ema", "opt", "args", "step")


def from_checkpoint(path: str | os.PathLike, ema: bool = True,
                    map_location: str | torch.device = "cpu") -> RoutedDiT:
    """RoutedDiT with the EMA (ema=True) or raw weights of the checkpoint at path, in eval mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {os.fspath(path)!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {os.fspath(path)!r} must hold a dict with keys "
                         f"{list(REQUIRED_KEYS)}, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {os.fspath(path)!r} lacks keys {missing} "
                         f"(expected {list(REQUIRED_KEYS)})")
    args = ckpt["args"]
    if not isinstance(args, dict) or "model_config" not in args:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: args must be a dict with key "
                         f"'model_config' (ModelConfig.to_dict())")
    model = RoutedDiT(ModelConfig.from_dict(args["model_config"]))
    model.load_state_dict(ckpt["ema" if ema else "model"])
    return model.to(map_location).eval()
