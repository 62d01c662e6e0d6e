"""Caption data for text-to-image training: (image, caption levels) pairs, one level per sample.

A captioned dataset gives, per image, captions at several levels of detail (the paper: detailed,
multi-sentence, one-sentence, keywords); every training sample takes one of its image's captions
uniformly at random, from a (seed, global position) stream (`pick_captions`). Two sources:

    captions-jsonl   one object per line, {"image": "<path relative to the file>", "captions":
                     {"detailed": "...", "one_sentence": "...", ...}} (or a list of strings)
    fashion-mnist-captions   templated captions built from the class name and two attributes
                     measured on the image -- size (fraction of lit pixels: small < 0.35 <=
                     medium < 0.5 <= large) and shade (mean lit intensity: dark gray < 0.45 <=
                     gray < 0.65 <= light gray) -- at the four levels (`fashion_mnist_captions`)

Both have num_classes 0 and `get(indices) -> (x [B, C, H, W], captions [B] lists of levels)`.
The training loop (sgkernels.train.trainer) turns captions into model inputs through the
conditioning hook `CaptionCondition` (sgkernels.train.conditioning), which looks the picked
captions up in a feature cache.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .images import FASHION_MNIST_CLASSES, TensorData, load_image

LEVELS = ("detailed", "multi_sentence", "one_sentence", "keywords")
_KIND = {"t-shirt/top": "top", "trouser": "pair of trousers", "pullover": "pullover",
         "dress": "dress", "coat": "coat", "sandal": "sandal", "shirt": "shirt",
         "sneaker": "sneaker", "bag": "bag", "ankle boot": "ankle boot"}
_GROUP = {"t-shirt/top": "clothing", "trouser": "clothing", "pullover": "clothing",
          "dress": "clothing", "coat": "clothing", "shirt": "clothing", "sandal": "footwear",
          "sneaker": "footwear", "ankle boot": "footwear", "bag": "accessory"}


def image_attributes(x: torch.Tensor) -> list[tuple[str, str]]:
    """(size, shade) words of each [B, 1, H, W] image in [-1, 1] on a dark background."""
    u = (x.float().flatten(1) + 1) / 2
    lit = (u > 0.1).float()
    area = lit.mean(1)
    shade = (u * lit).sum(1) / lit.sum(1).clamp(min=1)
    sizes = ["small" if a < 0.35 else "medium-sized" if a < 0.5 else "large"
             for a in area.tolist()]
    tones = ["dark gray" if s < 0.45 else "gray" if s < 0.65 else "light gray"
             for s in shade.tolist()]
    return list(zip(sizes, tones))


def fashion_mnist_captions(label: int, size: str, shade: str) -> dict[str, str]:
    """The four caption levels of a Fashion-MNIST image of class `label`."""
    name = FASHION_MNIST_CLASSES[label]
    kind, group = _KIND[name], _GROUP[name]
    return {
        "detailed": f"A grayscale photo of a single {size} {shade} {kind}, an item of {group}, "
                    f"centered on a plain black background.",
        "multi_sentence": f"{_article(kind).capitalize()} {kind} on a black background. "
                          f"It is {size} and {shade}.",
        "one_sentence": f"{_article(size).capitalize()} {size} {shade} {kind}.",
        "keywords": f"{kind}, {group}, {size}, {shade}",
    }


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class FashionMNISTCaptions:
    """Fashion-MNIST images with their templated caption levels."""

    num_classes = 0

    def __init__(self, data: TensorData):
        self.x = data.x
        self.captions = [list(fashion_mnist_captions(y, *attrs).values())
                         for attrs, y in zip(image_attributes(self.x), data.y.tolist())]

    def __len__(self):
        return self.x.shape[0]

    @property
    def shape(self):
        return tuple(self.x.shape[1:])

    def get(self, indices) -> tuple[torch.Tensor, list[list[str]]]:
        idx = [int(i) for i in indices]
        return self.x[idx], [self.captions[i] for i in idx]

    def all_captions(self) -> list[str]:
        return list(dict.fromkeys(c for caps in self.captions for c in caps))


class JsonlCaptions:
    """Images listed in a JSONL file with their caption levels (module docstring)."""

    num_classes = 0

    def __init__(self, path: str, size: int, channels: int = 3):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption file not found: {path}")
        self.files, self.captions = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            item = json.loads(line)
            caps = item.get("captions") if isinstance(item, dict) else None
            caps = list(caps.values()) if isinstance(caps, dict) else caps
            if "image" not in item or not caps or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"{path}:{n}: expected {{'image': str, 'captions': {{level: str}} "
                                 f"or [str, ...]}}, got {line[:120]!r}")
            self.files.append(path.parent / item["image"])
            self.captions.append(caps)
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {path} not found, "
                                    f"e.g. {missing[0]}")
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels}")
        self.size, self.channels = size, channels

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (self.channels, self.size, self.size)

    def get(self, indices) -> tuple[torch.Tensor, list[list[str]]]:
        idx = [int(i) for i in indices]
        return (torch.stack([load_image(self.files[i], self.size, self.channels) for i in idx]),
                [self.captions[i] for i in idx])

    def all_captions(self) -> list[str]:
        return list(dict.fromkeys(c for caps in self.captions for c in caps))


def pick_captions(captions: list[list[str]], drop: torch.Tensor, seed: int, positions) -> list[str]:
    """One caption level per sample, uniform from a (seed, position) stream; dropped -> ""."""
    out = []
    for caps, dropped, g in zip(captions, drop.tolist(), positions):
        level = int(np.random.default_rng([7, seed, int(g)]).integers(len(caps)))
        out.append("" if dropped else caps[level])
    return out
