"""sgkernels: Sparse Guidance for token-sparse diffusion transformers.

User API (imported lazily, so `import sgkernels` stays cheap):
    RoutedDiT, ModelConfig, Route, TokenBatch      the routed DiT (sgkernels.model)
    presets                                        preset registry: presets.get("SiT-XL/2")
    sample                                         guided sampler (sgkernels.sampling)
    ops, flops, guidance                           submodules
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "RoutedDiT": "sgkernels.model",
    "ModelConfig": "sgkernels.model",
    "Route": "sgkernels.model",
    "TokenBatch": "sgkernels.model",
    "sample": "sgkernels.sampling",
}
_SUBMODULES = {"ops", "model", "presets", "flops", "guidance", "sampling", "train", "flow", "eval",
               "data", "text"}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"sgkernels.{name}")
    raise AttributeError(f"module 'sgkernels' has no attribute {name!r}")
