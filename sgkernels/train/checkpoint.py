"""What a training checkpoint holds beyond the layout of model.checkpoint (its one definition:
make_checkpoint / read_checkpoint): args holds "model_config" (ModelConfig.to_dict()), "train"
(the training arguments) and "rng" (the torch CPU/CUDA, numpy and python RNG states at save
time), all tensors or plain Python values, so checkpoints load with torch.load(weights_only=True)
(for sample, eval, --resume and --finetune alike).

Checkpoints and args.json are written atomically (runtime.files.atomic_write: a crash leaves the
old file or the new one); `latest.pt` is a hard link (link_atomic) to the newest numbered
checkpoint.
"""
import random

import numpy as np
import torch


def rng_state() -> dict:
    """RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
