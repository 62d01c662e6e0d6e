"""Caption templates of the text encoder input.

Every caption c is encoded as `SYSTEM_PROMPT + " " + c` (TR-DiT practice: a fixed instruction
prefix steers the encoder's features towards visual attributes). The null condition of CFG is
the empty caption, i.e. the system prompt alone: `NULL_CAPTION = ""`.
"""
from __future__ import annotations

SYSTEM_PROMPT = ("Describe the image by detailing the color, shape, size, texture, quantity, "
                 "text, and spatial relationships of the objects.")
NULL_CAPTION = ""


def with_system_prompt(caption: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """The encoder input of `caption`: the system prompt, a space, the caption (stripped)."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    caption = caption.strip()
    return f"{system_prompt} {caption}" if caption else system_prompt
