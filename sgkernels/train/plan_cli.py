"""`python -m sgkernels plan`: will a training run fit? Per-GPU bytes from the model config.

    python -m sgkernels plan --model TR-DiT-2.5B --gpus 8 --batch 256 --gpu-mem 80 \\
        --parallel both --activation-checkpointing both

prints one table per (parallel, checkpointing) combination (sgkernels/train/plan.py has the
derivation of every row) and, with --json, writes them all to a file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sgkernels import presets

from .plan import CHECKPOINTING, PARALLEL, PRECISIONS, format_plan, plan
from .trainer import apply_overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels plan", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="preset name (" + ", ".join(presets.names())
                   + ")")
    p.add_argument("--set", dest="model_set", action="append", default=[],
                   metavar="FIELD=VALUE", help="override a field of the preset's ModelConfig")
    p.add_argument("--gpus", type=int, default=1, help="world size (default 1)")
    p.add_argument("--batch", type=int, required=True, help="global batch, split over the GPUs")
    p.add_argument("--gpu-mem", type=float, default=None, metavar="GIB",
                   help="memory of one GPU in GiB (e.g. 80); adds a fits / does not fit line")
    p.add_argument("--parallel", choices=(*PARALLEL, "both"), default="both")
    p.add_argument("--activation-checkpointing", choices=(*CHECKPOINTING, "both"),
                   default="none")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="compute precision (bf16: CUDA autocast / FSDP bf16 compute)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the plans as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = apply_overrides(presets.get(args.model), args.model_set)
    parallels = PARALLEL if args.parallel == "both" else (args.parallel,)
    policies = CHECKPOINTING if args.activation_checkpointing == "both" else \
        (args.activation_checkpointing,)
    plans = [plan(config, args.gpus, args.batch, par, ckpt, args.precision, args.gpu_mem)
             for par in parallels for ckpt in policies]
    print("\n\n".join(format_plan(args.model, p) for p in plans))
    if args.json:
        records = [dataclasses.asdict(p) | {"total": p.total, "fits": p.fits} for p in plans]
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "config": config.to_dict(), "plans": records}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
