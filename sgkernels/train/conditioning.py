"""Conditioning hooks of the training loop: what the model gets besides x_t and t.

A hook turns the dataset's second output (labels, or caption levels) into the model's condition,
`hook(raw, drop, positions, device) -> (y, text)`, and gives the captions of the sample grids,
`hook.grid_text(count, device) -> TextBatch | None`:

    LabelCondition      y = the labels (objective.batch_loss replaces the dropped ones by the null
                        class); text None. Grids: no text (grid.py cycles over the classes).
    CaptionCondition    y None; text = features of one caption level per sample, picked by a
                        (seed, position) stream, the null caption "" where the dropout coin fell
                        (sgkernels.data.pick_captions), looked up in a feature cache
                        (sgkernels.text; the encoder runs once per distinct caption, not per
                        step). Grids: image i of the dataset with its caption level i mod levels.

The cache lives at OUT/text_features.pt and is reused when its encoder settings (`meta`, also
saved in every checkpoint as args["text"] for sampling) match.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sgkernels.data import pick_captions
from sgkernels.model.text import TextBatch
from sgkernels.model.tokens import to_device


class LabelCondition:
    meta = None

    def __call__(self, y: torch.Tensor, drop, positions, device):
        return to_device(y, device), None

    def grid_text(self, count: int, device) -> None:
        return None


class CaptionCondition:
    def __init__(self, data, cache, seed: int):
        self.data, self.cache, self.seed = data, cache, seed
        self.meta = cache.meta

    def __call__(self, captions: list[list[str]], drop: torch.Tensor, positions, device):
        text = self.cache.get(pick_captions(captions, drop, self.seed, positions))
        return None, TextBatch(to_device(text.x, device), text.lengths)

    def grid_text(self, count: int, device):
        _, caps = self.data.get([i % len(self.data) for i in range(count)])
        return self.cache.get([c[i % len(c)] for i, c in enumerate(caps)]).to(device)


def feature_cache(out, encoder: str, config, captions: list[str], device):
    """The captions' features from OUT/text_features.pt, (re)built with `encoder` when its
    settings differ or captions are missing; width checked against config.text_dim."""
    from sgkernels.text import SYSTEM_PROMPT, TextEncoder, load_or_build_feature_cache

    meta = {"encoder": encoder, "system_prompt": SYSTEM_PROMPT, "max_length": config.text_len,
            "dim": config.text_dim}
    cache = load_or_build_feature_cache(Path(out) / "text_features.pt",
                                        lambda: TextEncoder(encoder, device, config.text_len),
                                        captions, meta)
    if cache.dim != config.text_dim:
        raise ValueError(f"encoder: {encoder!r} gives features of width {cache.dim}, the model "
                         f"expects text_dim {config.text_dim}")
    return cache
