"""Tiny routed models and run arguments shared by the training tests (digits, 8x8)."""
import torch

from sgkernels.model import ModelConfig, RoutedDiT
from sgkernels.train import TrainArgs


def tiny_config(**changes) -> ModelConfig:
    base = ModelConfig(input_size=8, patch_size=2, in_channels=1, num_classes=10, depth=2, dim=32,
                       heads=2, flavour="sit", routes=((1, 1, 0.5),))
    return base.replace(**changes)


def tiny_maskdit_config() -> ModelConfig:
    return tiny_config(routes=(), mask_ratio=0.5, decoder_depth=1, decoder_dim=32, decoder_heads=2)


def tiny_model(config: ModelConfig | None = None, seed: int = 0) -> RoutedDiT:
    torch.manual_seed(seed)
    return RoutedDiT(config or tiny_config())


def tiny_args(out, **changes) -> TrainArgs:
    base = {"model": None, "finetune": None, "data": "digits", "steps": 4, "batch": 8, "lr": 1e-3,
            "ema_decay": 0.9, "ckpt_every": 0, "sample_every": 0, "log_every": 1,
            "sample_count": 10, "sample_steps": 2, "out": str(out), "device": "cpu",
            "progress": False, "seed": 0}
    base.update(changes)
    if base["model"] is None and base["finetune"] is None:
        base["model"] = "custom"
    return TrainArgs(**base)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
