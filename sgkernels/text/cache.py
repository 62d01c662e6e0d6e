"""Precomputed caption features, so training never runs the text encoder per step.

A cache holds the features of a set of distinct captions (the empty null caption always among
them) packed in one tensor, plus the encoder settings that produced them:

    {"captions": [str, ...], "features": [L, E] tensor, "lengths": [L_0, ...],
     "meta": {"encoder", "system_prompt", "max_length", "dim"}}

saved with torch.save and loaded with weights_only=True. A dataset with several caption levels
per image stores each distinct caption once; a training step looks rows up by caption
(`get(captions) -> TextBatch`), a gather with no encoder call. `load_or_build_feature_cache`
reuses a cache file whose meta matches the encoder and that covers the captions, and rebuilds it
otherwise; files are written atomically (runtime.files).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from sgkernels.model.text import TextBatch
from sgkernels.runtime.files import save_atomic

from .prompts import NULL_CAPTION


class FeatureCache:
    def __init__(self, captions: Sequence[str], features: TextBatch, meta: dict):
        if len(captions) != features.num_segments:
            raise ValueError(f"captions ({len(captions)}) and feature segments "
                             f"({features.num_segments}) must match")
        self.captions = list(captions)
        self.features, self.meta = features, dict(meta)
        self._parts = features.split()
        self._index = {c: i for i, c in enumerate(self.captions)}
        if len(self._index) != len(self.captions):
            raise ValueError("captions of a FeatureCache must be distinct")

    @classmethod
    def build(cls, encoder, captions: Sequence[str]) -> FeatureCache:
        """Encode the distinct captions (and the null caption) once."""
        unique = list(dict.fromkeys([NULL_CAPTION, *captions]))
        return cls(unique, encoder.encode(unique), encoder.meta())

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, caption: str) -> bool:
        return caption in self._index

    @property
    def dim(self) -> int:
        return self.features.dim

    def get(self, captions: Sequence[str]) -> TextBatch:
        """Features of `captions` (repeats allowed) as one TextBatch."""
        missing = [c for c in captions if c not in self._index]
        if missing:
            raise ValueError(f"{len(missing)} caption(s) are not in the feature cache, e.g. "
                             f"{missing[0]!r}; rebuild it with these captions")
        return TextBatch.from_list([self._parts[self._index[c]] for c in captions])

    def null(self) -> TextBatch:
        """Features of the empty caption (the CFG null condition)."""
        return self.get([NULL_CAPTION])

    def save(self, path: str | os.PathLike) -> Path:
        return save_atomic({"captions": self.captions, "features": self.features.x,
                            "lengths": list(self.features.lengths), "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureCache:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature cache not found: {os.fspath(path)!r}")
        d = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in ("captions", "features", "lengths", "meta") if k not in d]
        if missing:
            raise ValueError(f"feature cache {os.fspath(path)!r} lacks keys {missing}")
        return cls(d["captions"], TextBatch(d["features"], tuple(d["lengths"])), d["meta"])


def load_or_build_feature_cache(path: str | os.PathLike, encoder_factory,
                                captions: Sequence[str], meta: dict | None = None) -> FeatureCache:
    """The cache at `path` if it matches `meta` and covers `captions`; else built and saved.

    encoder_factory() -> TextEncoder is called only when (re)building, so a valid cache spares
    loading the encoder at all. meta: the expected encoder settings (None: accept any).
    """
    if os.path.isfile(path):
        cache = FeatureCache.load(path)
        if (meta is None or cache.meta == meta) and all(c in cache for c in captions):
            return cache
    encoder = encoder_factory()
    cache = FeatureCache.build(encoder, captions)
    cache.save(path)
    return cache
