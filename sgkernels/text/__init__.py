"""Text side of T2I: caption templates (system prompt), a frozen local text encoder, and a
feature cache so training never runs the encoder per step. The model side (refiner, joining
text with image tokens) is `sgkernels.model.text`."""
from .cache import FeatureCache, load_or_build_feature_cache
from .encoder import DEFAULT_ENCODER, TextEncoder, resolve_encoder
from .prompts import NULL_CAPTION, SYSTEM_PROMPT, with_system_prompt

__all__ = ["DEFAULT_ENCODER", "FeatureCache", "NULL_CAPTION", "SYSTEM_PROMPT", "TextEncoder",
           "load_or_build_feature_cache", "resolve_encoder", "with_system_prompt"]
