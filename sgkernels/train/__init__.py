"""Flow-matching training of routed DiTs: `train(TrainArgs(...))` or `python -m sgkernels train`.

Modules: args (TrainArgs), trainer (loop), objective (batch loss), draws (per-sample randomness),
data (datasets), captions (caption datasets), conditioning (labels or caption features), ema,
checkpoint (atomic save, exact resume), faults (non-finite steps, SIGTERM / SIGINT), distributed
(torchrun / DDP), logger (tqdm, JSONL, CSV, loss plot), grid (sample grids), vae (optional latent
training).
"""
from .args import TrainArgs
from .trainer import Trainer, train

__all__ = ["TrainArgs", "Trainer", "train"]
