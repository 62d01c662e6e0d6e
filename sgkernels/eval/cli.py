"""`python -m sgkernels eval SAMPLES [options]`: FID, classifier metrics, PRDC, accuracy.

Examples:
    python -m sgkernels eval samples/sg/samples.npz --bootstrap 100 --json sg.json
    python -m sgkernels eval samples/cfg --metrics cfd,kid,prdc --space classifier
    python -m sgkernels eval fashion-mnist-test --num 500 --ref fashion-mnist-train \\
        --ref-num 500 --metrics fid        # real-vs-real baseline

SAMPLES is an .npz (arr_0 uint8 [N, H, W, C], arr_1 labels), a folder of images, or a named
reference (fashion-mnist-test / fashion-mnist-train). --ref takes the same, or an ADM reference
batch: its Inception statistics (mu, sigma) give fid without recomputation (docs/eval.md):
    python -m sgkernels eval samples/sit/samples.npz --ref VIRTUAL_imagenet256_labeled.npz \
        --metrics fid --device cuda Prints one row per metric: the value and,
with --bootstrap B > 0, the normal interval value ± z·std from the bootstrap standard error and
the mean of the replicates (see sgkernels/eval/bootstrap.py). --json stores everything, with
timings and the classifier's record.

Errors (a missing or unreadable file, a bad flag value) are one line on stderr naming the file
or flag, exit status 2; `python -m sgkernels eval --debug ...` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import zipfile
from pathlib import Path

from .evaluate import METRICS, SPACES, evaluate, parse_metrics
from .images import REFERENCES, load_reference


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("samples", help="samples .npz, image folder, or one of " + ", ".join(REFERENCES))
    a("--ref", default="fashion-mnist-test",
      help=f"reference: one of {', '.join(REFERENCES)} or a path (default fashion-mnist-test)")
    a("--metrics", default=",".join(METRICS),
      help=f"comma-separated subset of {','.join(METRICS)} (default all; acc is skipped when "
           "the samples have no labels)")
    a("--num", type=int, default=None, help="use the first N samples (default all)")
    a("--ref-num", type=int, default=None, help="use the first M reference images (default all)")
    a("--space", choices=SPACES, default="classifier", help="feature space of kid and prdc")
    a("--k", type=int, default=5, help="neighbourhood size of prdc (default 5)")
    a("--kid-subsets", type=int, default=100)
    a("--kid-subset-size", type=int, default=1000)
    a("--bootstrap", type=int, default=0, metavar="B",
      help="bootstrap replicates over the samples for confidence intervals (0: none)")
    a("--alpha", type=float, default=0.05, help="interval level 1 - alpha (default 0.05)")
    a("--seed", type=int, default=0, help="seed of KID subsets and bootstrap resamples")
    a("--device", default="cpu", help="device of the Inception network (default cpu)")
    a("--json", type=Path, default=None, help="write the results and run info here")
    a("--debug", action="store_true",
      help="full tracebacks and SGKERNELS_DEBUG=1 checks (python -m sgkernels eval ...)")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Flag values, before any file is read (p.error: one line, exit status 2)."""
    for flag, value, ok, expected in (
            ("--num", args.num, args.num is None or args.num >= 1, ">= 1"),
            ("--ref-num", args.ref_num, args.ref_num is None or args.ref_num >= 1, ">= 1"),
            ("--k", args.k, args.k >= 1, ">= 1"),
            ("--kid-subsets", args.kid_subsets, args.kid_subsets >= 1, ">= 1"),
            ("--kid-subset-size", args.kid_subset_size, args.kid_subset_size >= 2, ">= 2"),
            ("--bootstrap", args.bootstrap, args.bootstrap == 0 or args.bootstrap >= 2,
             "0 (none) or >= 2"),
            ("--alpha", args.alpha, math.isfinite(args.alpha) and 0 < args.alpha < 1,
             "in (0, 1)"),
            ("--seed", args.seed, args.seed >= 0, ">= 0")):
        if not ok:
            p.error(f"{flag} must be {expected}, got {value}")
    if args.json is not None and args.json.is_dir():
        p.error(f"--json {args.json} is a folder; expected a file path")


def load(spec: str, arg: str, num):
    """load_reference(spec).head(num), with unreadable files as one ValueError naming `arg` and
    the file (never numpy's allow_pickle advice)."""
    try:
        return load_reference(spec, arg).head(num)
    except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or (
                isinstance(e, ValueError) and "pickle" not in str(e)):
            raise
        why = {EOFError: "the file is empty", zipfile.BadZipFile: "not a zip archive or truncated"}
        reason = why.get(type(e)) or ("it holds pickled objects, which are never loaded"
                                      if "pickle" in str(e) else " ".join(str(e).split()))
        raise ValueError(f"{arg}: {spec} is not a readable .npz of uint8 images (arr_0 "
                         f"[N, H, W, C], or an ADM batch) or image folder: {reason}") from e


def format_table(result: dict) -> str:
    rows = result["metrics"]
    has_ci = any("low" in r for r in rows.values())
    level = 100 * (1 - result["info"].get("bootstrap", {}).get("alpha", 0.05))
    head = f"{'metric':10s} {'value':>12s}"
    if has_ci:
        head += f"  {f'{level:g}% interval':>27s} {'std':>10s} {'boot mean':>12s}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        line = f"{name:10s} {r['value']:12.6g}"
        if "low" in r:
            line += (f"  [{r['low']:12.6g}, {r['high']:12.6g}] {r['std']:10.4g} "
                     f"{r['mean']:12.6g}")
        lines.append(line)
    return "\n".join(lines)


def log(msg: str) -> None:
    """Progress goes to stderr so stdout holds only the table."""
    print(msg, file=sys.stderr)


def _user_error(args, error: Exception) -> int:
    """One line on stderr, exit status 2 (with --debug / SGKERNELS_DEBUG=1: the traceback)."""
    if args.debug or os.environ.get("SGKERNELS_DEBUG") == "1":
        raise error
    print(f"sgkernels eval: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        metrics = parse_metrics(args.metrics)
        samples = load(args.samples, "samples", args.num)
        reference = load(args.ref, "ref", args.ref_num)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return _user_error(args, e)
    unlabeled = samples.labels is None or bool((samples.labels < 0).all())   # -1: unconditional
    if "acc" in metrics and unlabeled and args.metrics == ",".join(METRICS):
        log(f"{samples.name} has no class labels: skipping acc")
        metrics = tuple(m for m in metrics if m != "acc")
    try:
        result = evaluate(samples, reference, metrics, space=args.space, k=args.k,
                          kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                          bootstrap=args.bootstrap, alpha=args.alpha, seed=args.seed,
                          device=args.device, log=log)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return _user_error(args, e)
    info = result["info"]
    space = f"  kid/prdc space: {info['space']}" if {"kid", "prdc"} & set(metrics) else ""
    size = "precomputed mu, sigma" if info["num_reference"] is None else info["num_reference"]
    print(f"samples: {info['samples']} ({info['num_samples']})  reference: {info['reference']} "
          f"({size}){space}")
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0
