"""`python -m sgkernels export CKPT --out model.pt`: one single-file checkpoint from a sharded one.

CKPT is a sharded checkpoint directory (checkpoints/<step>/ of a `--parallel fsdp` run), a run's
checkpoints/ folder or the run folder itself (its newest sharded checkpoint). The output has the
layout `sample`, `eval` and DDP training read (model, EMA, AdamW states, args, step), written
atomically; it runs in one process, with no process group.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import sharded_checkpoint as sharded


def resolve(path: str) -> Path:
    """The sharded checkpoint directory that `path` names (a directory, checkpoints/ or run)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"CKPT: {p} does not exist")
    if sharded.is_sharded(p):
        return p
    for folder in (p, p / "checkpoints"):
        found = sharded.latest(folder) if folder.is_dir() else None
        if found is not None:
            return found
    raise ValueError(f"CKPT: {p} is neither a sharded checkpoint directory nor a folder with "
                     f"one (checkpoints/latest, written by train --parallel fsdp)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sgkernels export", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", metavar="CKPT", help="sharded checkpoint, checkpoints/ or run folder")
    p.add_argument("--out", required=True, help="single-file checkpoint to write (.pt)")
    args = p.parse_args(argv)
    source = resolve(args.ckpt)
    out = sharded.export(source, args.out)
    print(f"exported {source} (step {sharded.read_meta(source)['step']}) -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
