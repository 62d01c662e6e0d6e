"""`python -m sgkernels convert IN OUT --to FORMAT`: checkpoints from one layout to another.

    python -m sgkernels convert runs/sit/checkpoints/latest.pt sit.pt --to sit
    python -m sgkernels convert SiT-XL-2-256x256.pt sit_xl.pt --to sgkernels --from sit

--to dit | sit writes the state dict the official DiT / SiT code loads (model.load_state_dict;
pos_embed included, routes dropped: to_official): the model's time_scale must be the kind's
(1000 for dit, 1 for sit), so a model trained here with the presets' time_scale 1000 exports as
dit. --to sgkernels writes a training checkpoint of an official file (model and ema both the
official weights, no optimizer state, step 0): what sample, eval and train --finetune read.
IN is read as --from says (default auto: sgkernels.model.official.load_model, which needs the
kind of a bare official state dict). OUT is written atomically (runtime.files).
"""
from __future__ import annotations

import argparse
import os

from ..runtime.files import save_atomic
from .checkpoint import make_checkpoint
from .official import KINDS, TITLES, load_model, to_official

FORMATS = ("sgkernels", *KINDS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="IN", help="checkpoint to read")
    p.add_argument("out", metavar="OUT", help="file to write")
    p.add_argument("--to", required=True, choices=FORMATS, help="layout of OUT")
    p.add_argument("--from", dest="kind", default="auto", choices=("auto", *FORMATS),
                   help="layout of IN (default auto)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"),
                   help="which weights of a training checkpoint (default ema)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if os.path.abspath(args.out) == os.path.abspath(args.source):
        p.error("OUT must differ from IN")
    model, kind = load_model(args.source, args.kind, ema=args.weights == "ema")
    if args.to == "sgkernels":
        if kind == "sgkernels":
            p.error(f"{args.source} is a sgkernels checkpoint already")
        state = model.state_dict()
        ckpt = make_checkpoint(model=state, ema=state, opt={}, step=0, args={
            "model_config": model.config.to_dict(),
            "converted_from": {"path": os.fspath(args.source), "kind": kind}})
        what = f"sgkernels checkpoint of the official {TITLES[kind]} weights"
    else:
        ckpt = to_official(model, args.to)
        what = f"official {TITLES[args.to]} state dict ({len(ckpt)} tensors)"
    save_atomic(ckpt, args.out)
    print(f"wrote {args.out}: {what}, depth {model.config.depth}, width {model.config.dim}, "
          f"time scale {model.config.time_scale:g}")
    return 0
