"""Sampling throughput and FLOPs of Sparse Guidance over the (γ_strong, γ_weak) grid.

For every valid cell γ_strong ≤ γ_weak of the grid {0, step, 2·step, …} < 1, sample with
SG(ω, γ_strong, γ_weak) = D_w(c) + ω(D_s(c) − D_w(c)) (both branches in one packed forward)
and report, next to the dense references unguided D(c) and CFG D(∅) + ω(D(c) − D(∅)):
    (a) throughput   B / (steps · t_step) images/s of a `--steps` run, t_step the time of
                     one guided sampler step (below)
    (b) GFLOPs       per image per step, paper convention (linear-layer MACs, sgkernels.flops)
    (c) speedup      t_step(CFG) / t_step(SG), same model and batch, with a 95 % interval
    (d) realized     (c) / (GFLOPs(CFG) / GFLOPs(SG)): the fraction of the FLOP-predicted
                     speedup that the wall clock shows (1 = all of the sparsity is realized)
On the diagonal γ_strong = γ_weak both branches are one branch (merged) and cost one forward.
`--separate` evaluates the branches as separate forwards for (a)–(d) and also times the packed
forward, adding panel (e): t_step(separate) / t_step(packed), what packing buys.
`--ckpt --metric {fid,cfd,kid,acc}` adds quality.png: the sgkernels.eval metric of
`--metric-num` images per cell of a coarse grid (`--metric-step`), full `--steps` runs.

Timing, paired (paired_timing): the cells are timed in blocks of `--block`; a round times CFG
once and every cell of the block once (`--timed` sampler steps per call), in a random order
drawn per round. A cell's speedup is the median over rounds of t_CFG / t_SG with its
distribution-free 95 % interval (order statistics), and its t_step is the median t_CFG of the
same rounds divided by that speedup, so (a), (c), (d) and the CFG time of a cell come from one
window and agree exactly. `--repeats` rounds per cell (6: the fewest whose (min, max) is a 95 %
interval), then one more round of CFG and the cells whose interval is not readable (coverage
below 95 % or relative width (high − low) / speedup above `--max-rel-width`) until they are, up
to `--max-repeats` rounds, while the run is ahead of the pace of `--target-s` (CPU: 100 s) and
`--budget-s`. Cells still not readable are hatched in the plot. The references (CFG, unguided and
SG 0.5/0.9, the summary line) are one such block, timed first. CUDA events after warm-up on
GPU, wall clock on CPU. `--compile`: the blocks through torch.compile (compile_blocks).
gamma_grid.csv and gamma_grid.json are rewritten after every block (common.Results; the PNG at
the end), so a killed run keeps the cells it timed; `--resume` keeps the cells of an earlier
run in --out and times only the missing ones (the references are timed again). Exit status 3
(common.EXIT_PARTIAL) when --budget-s left cells out.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import random
import statistics
import sys
from pathlib import Path

import common
import torch
from paired_timing import LEVEL, median_interval, ratios, rounds_to_narrow, time_round

from sgkernels import ops, presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, SparseGuidance

SG_FLOPS = (0.5, 0.9)  # the paper's SG_FLOPS setting, always timed as a reference
QUALITY_METRICS = ("fid", "cfd", "kid", "acc")  # scalar metrics of sgkernels.eval.evaluate
MIN_ROUNDS = 6  # the fewest rounds whose (min, max) is a 95 % interval of the median


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(
        p, "outputs/gamma_grid", device_help="auto (cuda if available), cpu, cuda[:N]",
        budget_help="stop timing new cells this many seconds after the start (the rest stay "
                    "empty)",
        resume_help="keep the cells of gamma_grid.csv in --out, time only the missing ones",
        quick_help="coarse grid (step 0.25), CPU batch 4, no extra rounds")
    p.add_argument("--model", default=None, choices=presets.names(),
                   help="preset; default SiT-XL/2 on CUDA, FMNIST-S/2 on CPU (random weights)")
    p.add_argument("--ckpt", default=None, help="training checkpoint (EMA weights); sets the model")
    p.add_argument("--batch", type=int, default=None, help="images per step (CUDA 64, CPU 8)")
    p.add_argument("--steps", type=int, default=40, help="steps of the run throughput refers to")
    p.add_argument("--step", type=float, default=None,
                   help="grid step (0.05: the paper's 20×20 grid); default 0.05 CUDA, 0.1 CPU")
    p.add_argument("--timed", type=int, default=None,
                   help="timed sampler steps per call (CUDA 2, CPU 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"rounds per cell, at least ({MIN_ROUNDS}: the fewest for a 95 %% "
                        "interval)")
    p.add_argument("--max-repeats", type=int, default=None,
                   help="rounds per cell at most: cells whose interval is not readable get "
                        "extra rounds up to this (default 2× --repeats; --repeats with "
                        "--quick)")
    p.add_argument("--target-s", type=float, default=None,
                   help="extra rounds only while the run is ahead of this many seconds' pace "
                        "(never leaves cells out; default CPU 100, CUDA none; --budget-s also "
                        "sets a pace)")
    p.add_argument("--block", type=int, default=5,
                   help="cells timed in the same rounds, against one CFG call per round")
    p.add_argument("--max-rel-width", type=float, default=0.2,
                   help="a cell whose 95 %% interval of the speedup is wider than this times "
                        "the speedup (0.2: about ± 10 %%) is not readable: extra rounds, "
                        "hatched in the plot")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's blocks as sample(compile=True) does "
                        "(RoutedDiT.compile_blocks: dynamic token counts, so the graphs "
                        "compiled in the first warm-up serve every cell)")
    p.add_argument("--backend", default="auto", choices=("auto", *ops.dispatch.BACKENDS))
    p.add_argument("--dtype", default=None, choices=common.DTYPES, help="CUDA bf16, CPU fp32")
    p.add_argument("--separate", action="store_true",
                   help="evaluate branches as separate forwards (and compare with packed)")
    p.add_argument("--scale", type=float, default=2.0,
                   help="guidance weight ω of SG and CFG (does not change the cost)")
    p.add_argument("--metric", default=None, choices=QUALITY_METRICS,
                   help="with --ckpt: quality heatmap on a coarse grid (sgkernels.eval)")
    p.add_argument("--metric-step", type=float, default=0.2, help="grid step of --metric")
    p.add_argument("--metric-num", type=int, default=1000, help="images per --metric cell")
    p.add_argument("--ref", default="fashion-mnist-test",
                   help="--metric reference: a sgkernels.eval reference name or image path")
    args = p.parse_args(argv)
    if args.model and presets.get(args.model).text_conditioned:
        p.error(f"--model {args.model!r} is text conditioned; gamma_grid.py samples "
                "class-conditional presets")
    if args.metric is not None:
        if not args.ckpt:
            p.error("--metric needs --ckpt: image quality of random weights is meaningless")
        if importlib.util.find_spec("sgkernels.eval") is None:
            p.error(f"--metric {args.metric!r} needs sgkernels.eval (the [eval] metrics), which "
                    "this installation of sgkernels does not have")
    for name in ("batch", "steps", "timed", "repeats", "max_repeats", "block", "metric_num"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    if args.max_repeats is not None and args.max_repeats < (args.repeats or MIN_ROUNDS):
        p.error(f"--max-repeats must be at least --repeats ({args.repeats or MIN_ROUNDS}), "
                f"got {args.max_repeats}")
    if args.target_s is not None and not args.target_s > 0:
        p.error(f"--target-s must be a positive number of seconds, got {args.target_s}")
    if not args.max_rel_width > 0:
        p.error(f"--max-rel-width must be a positive float, got {args.max_rel_width}")
    return args


def settings(args, device: torch.device) -> dict:
    """Fill the device-dependent defaults."""
    cuda = device.type == "cuda"
    model = (f"checkpoint {Path(args.ckpt).name}" if args.ckpt
             else args.model or ("SiT-XL/2" if cuda else "FMNIST-S/2"))
    repeats = args.repeats or MIN_ROUNDS
    return {
        "model": model,
        "batch": args.batch or (64 if cuda else 4 if args.quick else 8),
        "step": args.step or (0.25 if args.quick else 0.05 if cuda else 0.2),
        "timed": args.timed or (2 if cuda else 1),
        "repeats": repeats,
        "max_repeats": args.max_repeats or (repeats if args.quick else 2 * repeats),
        "block": args.block,
        "max_rel_width": args.max_rel_width,
        "target_s": args.target_s or (None if cuda else 100.0),
        # per cell; new shapes autotune Triton kernels on CUDA, and compile with --compile
        "warmup": 2 if args.compile else 1 if cuda else 0,
        "dtype": common.DTYPES[args.dtype or ("bf16" if cuda else "fp32")],
        "scale": args.scale,
    }


def cell_key(row: dict) -> tuple:
    return (row["gamma_strong"], row["gamma_weak"])


def readable(rounds: list[dict], pairs, s) -> bool:
    """Every ratio rounds[k][num] / rounds[k][den] of `pairs` has a readable interval."""
    return all(median_interval(ratios(rounds, num, den)).readable(s["max_rel_width"])
               for num, den in pairs)


def time_block(fns: dict, pairs: dict, s, device, rng: random.Random, warmup: dict,
               extra_ok) -> list[dict]:
    """Rounds of fns (the key "cfg" and the cases') timed in a random order per round.

    s["repeats"] rounds of every function, then, while extra_ok() and some case's ratios
    (pairs[case]: (numerator, denominator) keys, the first pair's rounds counted) are not
    readable, more rounds of CFG and the keys of those cases, as many as can narrow their
    intervals (paired_timing.rounds_to_narrow), each case up to s["max_repeats"] rounds.
    warmup[key]: untimed calls first.
    """
    for key, fn in fns.items():
        for _ in range(warmup.get(key, 0)):
            fn()
    common.synchronize(device)
    rounds = [time_round(fns, device, rng) for _ in range(s["repeats"])]
    while extra_ok():
        counts = {case: len(ratios(rounds, *ps[0])) for case, ps in pairs.items()}
        wide = [case for case, ps in pairs.items()
                if counts[case] < s["max_repeats"] and not readable(rounds, ps, s)]
        if not wide:
            break
        n = min(counts[case] for case in wide)
        keys = {"cfg", *(key for case in wide for pair in pairs[case] for key in pair)}
        timed = {k: fn for k, fn in fns.items() if k in keys}
        rounds += [time_round(timed, device, rng)
                   for _ in range(min(rounds_to_narrow(n), s["max_repeats"]) - n)]
    return rounds


def paired_values(rounds: list[dict], key, s, steps: int, gflops: float,
                  gflops_cfg: float) -> dict:
    """Columns of one case from the rounds that timed it with CFG (module docstring):
    speedup = median_k t_CFG,k / t_k with its 95 % interval, t_step = median t_CFG / speedup."""
    speed = median_interval(ratios(rounds, "cfg", key))
    cfg_ms = statistics.median(r["cfg"] for r in rounds if key in r) / s["timed"] * 1e3
    ms = cfg_ms / speed.median
    predicted = gflops_cfg / gflops
    return {"rounds": speed.n, "ms_per_step": ms, "cfg_ms_per_step": cfg_ms,
            "images_per_s": s["batch"] / (steps * ms / 1e3), "gflops_per_image_step": gflops,
            "speedup_vs_cfg": speed.median, "speedup_low": speed.low,
            "speedup_high": speed.high, "predicted_speedup": predicted,
            "realized_fraction": speed.median / predicted,
            "realized_low": speed.low / predicted, "realized_high": speed.high / predicted,
            "ci_coverage": speed.coverage, "rel_width": speed.rel_width,
            "wide": int(not speed.readable(s["max_rel_width"]))}


def packed_values(rounds: list[dict], key, packed_key, s) -> dict:
    """--separate: t(separate) / t(packed) of one cell, median over its rounds, 95 % interval."""
    gain = median_interval(ratios(rounds, key, packed_key))
    return {"packed_gain": gain.median, "packed_gain_low": gain.low,
            "packed_gain_high": gain.high,
            "packed_wide": int(not gain.readable(s["max_rel_width"]))}


def extra_rounds_allowed(clock: common.Clock | None, pace_s: float | None, done: int,
                         total: int) -> bool:
    """Extra rounds spend only the slack of a pace of pace_s seconds for the run (--target-s,
    --budget-s): allowed while the elapsed time is below its share for the cases timed so far
    (done of total); always without a pace."""
    return clock is None or pace_s is None or clock.elapsed() < pace_s * done / total


def run_grid(model, s, device, separate: bool, steps: int, clock: common.Clock | None = None,
             results: common.Results | None = None) -> tuple[list[dict], dict]:
    """Time the references, then every valid cell; returns CSV rows and reference values.

    Paired rounds as in the module docstring. With a `clock`, blocks not started before its
    --budget-s is spent are left out (not measured). With `results`, every block's cells are
    added to it (files rewritten) as soon as they are timed, and cells it already has are not
    timed again.
    """
    cfg, gammas = model.config, common.gamma_values(s["step"])
    rng = random.Random(0)  # the order of the calls in each round

    def sampler(guidance, packed=not separate):
        return common.sampling_fn(model, guidance, s["batch"], s["timed"], device, s["dtype"],
                                  packed=packed)

    cells = [(g_s, g_w) for i, g_s in enumerate(gammas) for g_w in gammas[i:]
             if results is None or not results.has((g_s, g_w))]
    guidances = {"cfg": CFG(s["scale"]), "unguided": None,
                 "sg_flops_0.5_0.9": SparseGuidance(s["scale"], *SG_FLOPS)}
    total = len(guidances) + len(cells)
    paces = [x for x in (s["target_s"], clock and clock.budget_s) if x is not None]
    pace_s = min(paces, default=None)
    fns = {key: sampler(g) for key, g in guidances.items()}
    # one case: every round times all three, so the summary's figures share their rounds
    rounds = time_block(fns, {"references": [("cfg", key) for key in guidances]}, s, device,
                        rng, dict.fromkeys(fns, 1),
                        lambda: extra_rounds_allowed(clock, pace_s, len(guidances), total))
    gflops_cfg = sampling_gflops(cfg, guidances["cfg"], steps)
    reference = {key: paired_values(rounds, key, s, steps, sampling_gflops(cfg, g, steps),
                                    gflops_cfg)
                 for key, g in guidances.items()}
    if results is not None:
        results.flush(reference=reference)
    rows, cfg_fn = [], fns["cfg"]
    for start in range(0, len(cells), s["block"]):
        if clock is not None and clock.over_budget():
            break
        block = cells[start:start + s["block"]]
        fns, pairs = {"cfg": cfg_fn}, {}
        for cell in block:
            fns[cell] = sampler(SparseGuidance(s["scale"], *cell))
            pairs[cell] = [("cfg", cell)]
            if separate:
                fns[cell + ("packed",)] = sampler(SparseGuidance(s["scale"], *cell), True)
                pairs[cell].append((cell, cell + ("packed",)))
        done = len(guidances) + start + len(block)
        rounds = time_block(fns, pairs, s, device, rng,
                            {key: s["warmup"] for key in fns if key != "cfg"},
                            lambda done=done: extra_rounds_allowed(clock, pace_s, done, total))
        for g_s, g_w in block:
            guidance = SparseGuidance(s["scale"], g_s, g_w)
            row = {"gamma_strong": g_s, "gamma_weak": g_w,
                   **paired_values(rounds, (g_s, g_w), s, steps,
                                   sampling_gflops(cfg, guidance, steps), gflops_cfg),
                   "gflops_full": sampling_gflops(cfg, guidance, steps, convention="full")}
            if separate:
                row.update(packed_values(rounds, (g_s, g_w), (g_s, g_w, "packed"), s))
            rows.append(row)
            print(f"γ_s {g_s:4.2f} γ_w {g_w:4.2f}: {row['ms_per_step']:8.1f} ms/step "
                  f"{row['images_per_s']:8.3g} img/s  speedup {row['speedup_vs_cfg']:.2f} "
                  f"[{row['speedup_low']:.2f}, {row['speedup_high']:.2f}] "
                  f"(FLOPs {row['predicted_speedup']:.2f}), {row['rounds']} rounds"
                  + ("  wide" if row["wide"] else ""), flush=True)
        if results is not None:
            results.add(rows[-len(block):], flush=False)
            results.flush(reference=reference, cells=len(results.rows))
    return rows, reference


def quality_grid(model, args, s, device) -> tuple[list[dict], dict]:
    """`--metric` of `--metric-num` images sampled with full `--steps` runs per cell of the
    coarse grid (`--metric-step`), plus CFG and unguided; labels cycle through the classes."""
    import numpy as np

    import sgkernels
    from sgkernels.eval import ImageSet, evaluate, load_reference
    from sgkernels.runtime.images import IMAGE_CHANNELS, to_uint8

    cfg = model.config
    if cfg.in_channels not in IMAGE_CHANNELS or cfg.num_classes < 1:
        raise ValueError(f"--metric needs a class-conditional model sampling images with "
                         f"{IMAGE_CHANNELS} channels, got {cfg.in_channels}-channel samples")
    reference = load_reference(args.ref)
    labels = torch.arange(args.metric_num) % cfg.num_classes

    def score(guidance) -> float:
        gen = torch.Generator(device=device).manual_seed(0)
        images = []
        for chunk in labels.split(s["batch"]):
            shape = (len(chunk), cfg.in_channels, cfg.input_size, cfg.input_size)
            noise = torch.randn(shape, generator=gen, device=device, dtype=s["dtype"])
            x = sgkernels.sample(model, noise, chunk.to(device), steps=args.steps,
                                 guidance=guidance, generator=gen)
            images.append(to_uint8(x))
        samples = ImageSet(np.concatenate(images), labels.numpy(), "gamma_grid")
        result = evaluate(samples, reference, (args.metric,), device=str(device))
        return result["metrics"][args.metric]["value"]

    gammas = common.gamma_values(args.metric_step)
    rows = []
    for i, g_s in enumerate(gammas):
        for g_w in gammas[i:]:
            value = score(SparseGuidance(s["scale"], g_s, g_w))
            rows.append({"gamma_strong": g_s, "gamma_weak": g_w, args.metric: value})
            print(f"γ_s {g_s:4.2f} γ_w {g_w:4.2f}: {args.metric} {value:.4g}", flush=True)
    reference_values = {"cfg": score(CFG(s["scale"])), "unguided": score(None)}
    return rows, reference_values


def plot_quality(rows, reference, args, record, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gammas = common.gamma_values(args.metric_step)
    fig, ax = plt.subplots(figsize=(7, 6.5))
    higher = args.metric == "acc"  # the other metrics are distances: lower is better
    common.heatmap(ax, grid_array(rows, gammas, args.metric), gammas,
                   f"{args.metric} vs {args.ref}, {'higher' if higher else 'lower'} is better\n"
                   f"(CFG {reference['cfg']:.4g}, unguided {reference['unguided']:.4g})",
                   "{:.3g}", "viridis" if higher else "viridis_r")
    fig.suptitle(f"SG quality — {args.ckpt}, ω {args.scale}, {args.metric_num} images per cell, "
                 f"{args.steps} Euler steps\n{record['machine']['date_utc']} UTC", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grid_array(rows, gammas, key):
    """[γ_strong, γ_weak] array of rows[key]; NaN where invalid (γ_strong > γ_weak)."""
    index = {g: i for i, g in enumerate(gammas)}
    values = [[math.nan] * len(gammas) for _ in gammas]
    for r in rows:
        if key in r:
            values[index[r["gamma_strong"]]][index[r["gamma_weak"]]] = r[key]
    return values


def mark_unreadable(ax, rows, gammas, key: str) -> int:
    """Hatch the cells of `ax` whose rows[key] is set (interval not readable); their count."""
    from matplotlib.patches import Rectangle

    index = {g: i for i, g in enumerate(gammas)}
    marked = [r for r in rows if r.get(key)]
    for r in marked:
        ax.add_patch(Rectangle((index[r["gamma_weak"]] - 0.5, index[r["gamma_strong"]] - 0.5),
                               1, 1, fill=False, hatch="//", edgecolor="0.55", linewidth=0))
    return len(marked)


def plot(rows, reference, s, record, steps, separate, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    gammas = common.gamma_values(s["step"])
    ref_u, ref_c, ref_sg = reference["unguided"], reference["cfg"], reference["sg_flops_0.5_0.9"]
    panels = [("images_per_s", f"(a) images/s (CFG {ref_c['images_per_s']:.3g}, "
                               f"unguided {ref_u['images_per_s']:.3g})", "{:.3g}", "viridis", None,
               "wide"),
              ("gflops_per_image_step", f"(b) GFLOPs/image/step (CFG "
                                        f"{ref_c['gflops_per_image_step']:.3g}, unguided "
                                        f"{ref_u['gflops_per_image_step']:.3g})", "{:.3g}",
               "magma", None, None),
              ("speedup_vs_cfg", f"(c) speedup over CFG (unguided "
                                 f"{ref_u['speedup_vs_cfg']:.2f}×; SG 0.5/0.9 "
                                 f"{ref_sg['speedup_vs_cfg']:.2f}× [{ref_sg['speedup_low']:.2f}, "
                                 f"{ref_sg['speedup_high']:.2f}])", "{:.2f}", "viridis", None,
               "wide"),
              ("realized_fraction", f"(d) measured / FLOP-predicted speedup (SG 0.5/0.9: "
                                    f"{ref_sg['speedup_vs_cfg']:.2f} / "
                                    f"{ref_sg['predicted_speedup']:.2f})", "{:.2f}", "RdYlGn",
               1.0, "wide")]
    if separate:
        panels.append(("packed_gain", "(e) t(separate) / t(packed)", "{:.2f}", "RdYlGn", 1.0,
                       "packed_wide"))
    cols = 3 if separate else 2
    fig, axes = plt.subplots(2, cols, figsize=(6.2 * cols, 10.8))
    marked = 0
    for ax, (key, title, fmt, cmap, center, wide) in zip(axes.flat, panels):
        common.heatmap(ax, grid_array(rows, gammas, key), gammas, title, fmt, cmap, center)
        if wide:
            marked += mark_unreadable(ax, rows, gammas, wide)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if marked:
        fig.legend(handles=[Patch(facecolor="none", edgecolor="0.55", hatch="//", label=(
            f"hatched: not readable, the {LEVEL:.0%} interval of the cell's ratio is wider than "
            f"{s['max_rel_width']:g}× its value (--max-rel-width) or rests on fewer than "
            f"{MIN_ROUNDS} rounds"))], loc="lower center", fontsize=9, frameon=False)
    m = record["machine"]
    where = m.get("gpu") or m["cpu"]
    mode = "separate forwards" if separate else "packed forward"
    threads = "" if m["device"] != "cpu" else f", {record['cpu_threads']} threads"
    fig.suptitle(
        f"Sparse Guidance γ grid — {record['model']}, batch {s['batch']}, {record['dtype']}, "
        f"backend {record['backend']}, {mode}{', compiled' if record['compiled'] else ''}, "
        f"ω {s['scale']}\n{where} ({m['device']}{threads}), {m['date_utc']} UTC\n"
        f"per cell {s['repeats']}–{s['max_repeats']} rounds of {s['timed']} timed step(s), CFG "
        f"and {s['block']} cells in a random order per round; speedup: median of per-round "
        f"ratios\nthroughput extrapolated to a {steps}-step run; grey: γ_strong > γ_weak "
        "(invalid)", fontsize=10)
    fig.tight_layout(rect=(0, 0.025, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(reference: dict) -> str:
    """The headline: CFG, unguided and SG 0.5/0.9 from the references' shared rounds."""
    c, u, sg = reference["cfg"], reference["unguided"], reference["sg_flops_0.5_0.9"]
    return (f"CFG {c['images_per_s']:.3g} img/s, unguided {u['images_per_s']:.3g} img/s = "
            f"{u['speedup_vs_cfg']:.2f}× CFG; SG 0.5/0.9 {sg['images_per_s']:.3g} img/s = "
            f"{sg['speedup_vs_cfg']:.2f}× CFG [{sg['speedup_low']:.2f}, "
            f"{sg['speedup_high']:.2f}] (FLOPs predict {sg['predicted_speedup']:.2f}×, realized "
            f"{sg['realized_fraction']:.0%} [{sg['realized_low']:.0%}, "
            f"{sg['realized_high']:.0%}]); {c['rounds']} paired rounds, "
            f"{c['ci_coverage']:.1%} intervals")


def main(argv=None) -> dict:
    args = parse_args(argv)
    clock = common.Clock(args.budget_s)
    device, threads = common.apply_common_flags(args)
    s = settings(args, device)
    torch.manual_seed(0)
    model = common.build_model(s["model"], args.ckpt, device, s["dtype"])
    backend = args.backend
    n = len(common.gamma_values(s["step"]))
    record = {
        "what": "Sparse Guidance sampling over the (gamma_strong, gamma_weak) grid",
        "machine": common.machine_info(device),
        "model": s["model"], "ckpt": args.ckpt, "weights": "checkpoint EMA" if args.ckpt
        else "random init", "model_config": model.config.to_dict(),
        "batch": s["batch"], "dtype": str(s["dtype"]).removeprefix("torch."),
        "backend": backend, "packed": not args.separate, "guidance_scale": s["scale"],
        "cpu_threads": threads, "solver": "euler", "steps": args.steps, "grid_step": s["step"],
        "gammas": common.gamma_values(s["step"]),
        "compiled": args.compile,
        "timing": (f"per cell {s['repeats']} to {s['max_repeats']} rounds; a round times CFG "
                   f"and {s['block']} cells once each in a random order, {s['timed']} sampler "
                   f"step(s) per call, after {s['warmup']} warm-up call(s) per cell; speedup "
                   "the median of per-round t_CFG / t_SG with its distribution-free interval, "
                   "ms/step the median t_CFG of the same rounds / speedup; "
                   + ("CUDA events" if device.type == "cuda" else "wall clock")
                   + f"; images/s extrapolated to a {args.steps}-step run"),
        "rounds_min": s["repeats"], "rounds_max": s["max_repeats"],
        "cells_per_block": s["block"], "interval_level": LEVEL,
        "max_rel_width": s["max_rel_width"], "target_s": s["target_s"],
        "flops_convention": "paper (linear-layer MACs; attention products excluded)",
        "cells": 0, "cells_valid": n * (n + 1) // 2,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = common.Results(args.out / "gamma_grid.csv", args.out / "gamma_grid.json", record,
                             key=cell_key, resume=args.resume)
    if results.resumed:
        print(f"--resume: {results.resumed} cells kept from {results.csv_path}")
    forced = contextlib.nullcontext() if backend == "auto" else ops.use_backend(backend)
    if args.compile:              # as sample(compile=True): one graph per block code path
        model.compile_blocks()
    with forced:
        _, reference = run_grid(model, s, device, args.separate, args.steps, clock, results)
        rows = results.rows
        record.update(reference=reference, cells=len(rows),
                      complete=len(rows) == record["cells_valid"], seconds=clock.seconds())
        results.flush(complete=record["complete"])
        png = plot(rows, reference, s, record, args.steps, args.separate,
                   args.out / "gamma_grid.png")
        if args.metric:
            q_rows, q_ref = quality_grid(model, args, s, device)
            record["quality"] = {"metric": args.metric, "reference_set": args.ref,
                                 "images_per_cell": args.metric_num,
                                 "grid_step": args.metric_step, "cfg": q_ref["cfg"],
                                 "unguided": q_ref["unguided"], "cells": q_rows}
            common.write_csv(args.out / "quality.csv", q_rows)
            plot_quality(q_rows, q_ref, args, record, args.out / "quality.png")
            results.flush(complete=record["complete"])
    print(summary(reference))
    print(f"wrote {png}, gamma_grid.csv, gamma_grid.json in {args.out} "
          f"({record['seconds']:.0f} s; {record['cells']} of {record['cells_valid']} cells, "
          f"{sum(1 for r in rows if r.get('wide'))} not readable)")
    return record


if __name__ == "__main__":
    sys.exit(0 if main()["complete"] else common.EXIT_PARTIAL)
