"""Loading a RoutedDiT from a training checkpoint.

Checkpoint layout (DiT/nanoGPT style), written by the trainer with torch.save:
    {"model": state_dict, "ema": state_dict, "opt": optimizer state, "args": dict, "step": int}
where args["model_config"] = ModelConfig.to_dict(). Loaded with weights_only=True, so args must
hold only plain Python values (str, int, float, bool, None, lists, dicts).

Errors (docs/contracts.md, "Input policy"): a missing path is a FileNotFoundError; every other
unreadable or mismatched file is ONE ValueError naming the file and what was expected -- an
empty, truncated, text or random file, a pickle of other Python objects (never loaded: no
weights_only=False), a dict without the checkpoint keys, a model_config that is not a
ModelConfig, weights that do not fit the config (first missing / unexpected keys and shape
mismatches) or that hold NaN / inf.
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile

import torch

from .config import ModelConfig
from .dit import RoutedDiT

REQUIRED_KEYS = ("model", "ema", "opt", "args", "step")
EXPECTED = ("a sgkernels training checkpoint (a torch.save zip holding a dict with keys "
            f"{list(REQUIRED_KEYS)}, as `python -m sgkernels train` writes)")
SHOWN = 3                                   # keys / shapes listed per kind of mismatch


def make_checkpoint(**parts) -> dict:
    """The checkpoint dict of the layout above (what the trainer saves): `parts` by key, exactly
    the keys of REQUIRED_KEYS, in the order given."""
    if sorted(parts) != sorted(REQUIRED_KEYS):
        raise ValueError(f"a checkpoint takes exactly the parts {list(REQUIRED_KEYS)}, got "
                         f"{list(parts)}")
    return dict(parts)


def _unreadable(path: str, error: BaseException) -> str:
    """Why torch.load failed on `path`, in a few words (never torch's weights_only advice)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    text = str(error)
    if head.startswith(b"PK"):
        if "central directory" in text or isinstance(error, zipfile.BadZipFile):
            return "the zip archive is truncated or corrupt (no central directory)"
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            return (f"it pickles Python objects other than tensors and plain values "
                    f"({unsafe.group(1)}), which are never loaded")
        if "not in a subdirectory" in text:
            return "it is a zip archive but not one torch.save wrote (an .npz?)"
        return "the zip archive is corrupt"
    if head[:1] == b"\x80":
        return "it is a pickle of other Python objects, not a torch.save checkpoint"
    try:
        head.decode("ascii")
        return "it is a text file"
    except UnicodeDecodeError:
        return "its contents are not a torch.save archive"


def load_file(path: str | os.PathLike, map_location="cpu", expected: str = EXPECTED,
              safe_globals: tuple = ()) -> object:
    """The object torch.save wrote to `path` (torch.load weights_only=True, which also admits
    the classes of `safe_globals`), or one error naming the file and `expected`."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"checkpoint file not found: {name!r}")
    if os.path.isdir(name):
        raise ValueError(f"checkpoint {name!r} is a directory; expected {expected}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise on stderr
            return torch.load(name, map_location=map_location, weights_only=True)
    except (PermissionError, MemoryError):
        raise
    except Exception as e:                  # EOFError, RuntimeError, UnpicklingError, KeyError...
        raise ValueError(f"checkpoint {name!r} is not {expected}: {_unreadable(name, e)}") \
            from e


def check_checkpoint(ckpt, name: str) -> dict:
    """The loaded checkpoint object `ckpt` of file `name`, its keys checked."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {name!r} holds a {type(ckpt).__name__}; expected "
                         f"{EXPECTED}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        bare = ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        hint = " (it looks like a bare state_dict)" if bare else ""
        raise ValueError(f"checkpoint {name!r} lacks keys {missing}{hint}; expected {EXPECTED}")
    args = ckpt["args"]
    if not isinstance(args, dict) or "model_config" not in args:
        raise ValueError(f"checkpoint {name!r}: args must be a dict with key "
                         f"'model_config' (ModelConfig.to_dict())")
    return ckpt


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint dict at `path` (torch.load weights_only=True), its keys checked."""
    return check_checkpoint(load_file(path, map_location), os.fspath(path))


def checkpoint_config(ckpt: dict, name: str) -> ModelConfig:
    """The ModelConfig stored in a checkpoint dict, or a ValueError naming the file."""
    try:
        return ModelConfig.from_dict(ckpt["args"]["model_config"])
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"checkpoint {name!r}: args['model_config'] is not a valid "
                         f"ModelConfig ({' '.join(str(e).split())})") from e


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def state_problems(expected: dict[str, torch.Tensor], state: dict) -> list[str]:
    """The first missing and unexpected keys of `state` and its shapes that differ from those of
    `expected` (a state dict), one phrase per kind of mismatch; [] when it fits."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape (checkpoint vs config) {_listed(shapes)}")
    return problems


def check_state_dict(model: torch.nn.Module, state, name: str, which: str) -> None:
    """ValueError naming the checkpoint and the first mismatches when `state` does not fit
    `model` exactly (missing / unexpected keys, shapes) or holds non-finite values."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"checkpoint {name!r}: {which!r} must be a state_dict (a dict of "
                         f"tensors), got {type(state).__name__}")
    problems = state_problems(model.state_dict(), state)
    if problems:
        raise ValueError(f"checkpoint {name!r}: the {which!r} weights do not fit its "
                         f"model_config: {'; '.join(problems)}")
    bad = non_finite(state)
    if bad:
        raise ValueError(f"checkpoint {name!r}: the {which!r} weights hold NaN or inf in "
                         f"{_listed(bad)}")


def non_finite(state: dict) -> list[str]:
    """The keys of the floating-point tensors of `state` that hold NaN or inf (one sync)."""
    floats = [(k, v) for k, v in state.items() if v.is_floating_point() and v.numel()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(v).all() for _, v in floats]).cpu()
    return [k for (k, _), ok in zip(floats, finite.tolist()) if not ok]


def model_from_checkpoint(ckpt, name: str, ema: bool = True) -> RoutedDiT:
    """RoutedDiT (CPU, eval mode) with the EMA (ema=True) or raw weights of the loaded checkpoint
    object `ckpt` of file `name`."""
    ckpt = check_checkpoint(ckpt, name)
    model = RoutedDiT(checkpoint_config(ckpt, name))
    which = "ema" if ema else "model"
    check_state_dict(model, ckpt[which], name, which)
    model.load_state_dict(ckpt[which])
    return model.eval()


def from_checkpoint(path: str | os.PathLike, ema: bool = True,
                    map_location: str | torch.device = "cpu") -> RoutedDiT:
    """RoutedDiT with the EMA (ema=True) or raw weights of the checkpoint at path, in eval mode."""
    ckpt = load_file(path, map_location)
    return model_from_checkpoint(ckpt, os.fspath(path), ema).to(map_location)
