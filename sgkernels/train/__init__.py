"""Flow-matching training of routed DiTs: `train(TrainArgs(...))` or `python -m sgkernels train`.

Modules: args (TrainArgs), trainer (loop), objective (batch loss), draws (per-sample randomness),
conditioning (labels or caption features), ema, checkpoint (atomic save, exact resume), faults
(non-finite steps, SIGTERM / SIGINT), distributed (torchrun / DDP), logger (tqdm, JSONL, CSV, loss
plot), grid (sample grids), vae (optional latent training). The datasets (image readers, caption
datasets, `load_dataset`) are sgkernels.data, shared with sgkernels.eval; DATASETS and
load_dataset are re-exported here.
"""
from sgkernels.data import DATASETS, load_dataset

from .args import TrainArgs
from .trainer import Trainer, train

__all__ = ["DATASETS", "TrainArgs", "Trainer", "load_dataset", "train"]
