"""`python -m sgkernels eval SAMPLES [options]`: FID, classifier metrics, PRDC, accuracy.

Examples:
    python -m sgkernels eval samples/sg/samples.npz --bootstrap 100 --json sg.json
    python -m sgkernels eval samples/cfg --metrics cfd,kid,prdc --space classifier
    python -m sgkernels eval fashion-mnist-test --num 500 --ref fashion-mnist-train \\
        --ref-num 500 --metrics fid        # real-vs-real baseline

SAMPLES is an .npz (arr_0 uint8 [N, H, W, C], arr_1 labels), a folder of images, or a named
reference (fashion-mnist-test / fashion-mnist-train). Prints one row per metric: the value and,
with --bootstrap B > 0, the normal interval value ± z·std from the bootstrap standard error and
the mean of the replicates (see sgkernels/eval/bootstrap.py). --json stores everything, with
timings and the classifier's record.
"""
from __future__ import annotations

import argparse
import json
import sys
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
    return p


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = parse_metrics(args.metrics)
        samples = load_reference(args.samples, "samples").head(args.num)
        reference = load_reference(args.ref).head(args.ref_num)
    except (ValueError, FileNotFoundError) as e:
        print(f"sgkernels eval: {e}", file=sys.stderr)
        return 2
    if "acc" in metrics and samples.labels is None and args.metrics == ",".join(METRICS):
        log(f"{samples.name} has no labels: skipping acc")
        metrics = tuple(m for m in metrics if m != "acc")
    try:
        result = evaluate(samples, reference, metrics, space=args.space, k=args.k,
                          kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                          bootstrap=args.bootstrap, alpha=args.alpha, seed=args.seed,
                          device=args.device, log=log)
    except (ValueError, FileNotFoundError) as e:
        print(f"sgkernels eval: {e}", file=sys.stderr)
        return 2
    info = result["info"]
    space = f"  kid/prdc space: {info['space']}" if {"kid", "prdc"} & set(metrics) else ""
    print(f"samples: {info['samples']} ({info['num_samples']})  reference: {info['reference']} "
          f"({info['num_reference']}){space}")
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0
