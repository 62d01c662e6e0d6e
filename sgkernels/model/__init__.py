"""The routed DiT: config, packed token batches, routing, blocks, MaskDiT decoder, text
conditioning (T2I), checkpoints, official DiT / SiT weights (official.py)."""
from .checkpoint import from_checkpoint
from .config import ModelConfig, Route, keep_count
from .dit import RoutedDiT
from .official import load_official, to_official
from .text import TextBatch
from .tokens import TokenBatch, patchify, unpatchify

__all__ = ["ModelConfig", "Route", "RoutedDiT", "TextBatch", "TokenBatch", "from_checkpoint",
           "keep_count", "load_official", "patchify", "to_official", "unpatchify"]
