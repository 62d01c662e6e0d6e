"""Sampling throughput and FLOPs of Sparse Guidance over the (γ_strong, γ_weak) grid.

For every valid cell γ_strong ≤ γ_weak of the grid {0, step, 2·step, …} < 1, sample with
SG(ω, γ_strong, γ_weak) = D_w(c) + ω(D_s(c) − D_w(c)) (both branches in one packed forward) and
report, next to the dense references unguided D(c) and CFG D(∅) + ω(D(c) − D(∅)):
    (a) throughput   B / (steps · t_step) images/s: t_step, the median time of one guided sampler
                     step, is measured on `timed` steps and extrapolated to a `--steps` run
    (b) GFLOPs       per image per step, paper convention (linear-layer MACs, sgkernels.flops)
    (c) speedup      t_step(CFG) / t_step(SG), same model and batch: every cell is timed
                     round-robin with CFG, and (c) is the median of the per-round ratios, so
                     slow drifts of machine load cancel
    (d) realized     (c) / (GFLOPs(CFG) / GFLOPs(SG)): the fraction of the FLOP-predicted
                     speedup that the wall clock shows (1 = all of the sparsity is realized)
On the diagonal γ_strong = γ_weak both branches are one branch (merged) and cost one forward.
`--separate` evaluates the branches as separate forwards for (a)–(d) and also times the packed
forward, adding panel (e): t_step(separate) / t_step(packed), what packing buys.
`--ckpt --metric {fid,cfd,kid,acc}` adds quality.png: the sgkernels.eval metric of
`--metric-num` images per cell of a coarse grid (`--metric-step`), full `--steps` runs.
Timing: CUDA events after warm-up on GPU, wall clock on CPU; medians over repeats.
gamma_grid.csv and gamma_grid.json are rewritten after every cell (common.Results; the PNG at
the end), so a killed run keeps the cells it timed; `--resume` keeps the cells of an earlier
run in --out and times only the missing ones (the references are timed again). Exit status 3
(common.EXIT_PARTIAL) when --budget-s left cells out.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import sys
from pathlib import Path

import common
import torch

from sgkernels import ops, presets
from sgkernels.flops import sampling_gflops
from sgkernels.guidance import CFG, SparseGuidance

SG_FLOPS = (0.5, 0.9)  # the paper's SG_FLOPS setting, always timed as a reference
QUALITY_METRICS = ("fid", "cfd", "kid", "acc")  # scalar metrics of sgkernels.eval.evaluate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(
        p, "outputs/gamma_grid", device_help="auto (cuda if available), cpu, cuda[:N]",
        budget_help="stop timing new cells this many seconds after the start (the rest stay "
                    "empty)",
        resume_help="keep the cells of gamma_grid.csv in --out, time only the missing ones",
        quick_help="coarse grid (step 0.25), fewer repeats, CPU batch 4")
    p.add_argument("--model", default=None, choices=presets.names(),
                   help="preset; default SiT-XL/2 on CUDA, FMNIST-S/2 on CPU (random weights)")
    p.add_argument("--ckpt", default=None, help="training checkpoint (EMA weights); sets the model")
    p.add_argument("--batch", type=int, default=None, help="images per step (CUDA 64, CPU 8)")
    p.add_argument("--steps", type=int, default=40, help="steps of the run throughput refers to")
    p.add_argument("--step", type=float, default=None,
                   help="grid step (0.05: the paper's 20×20 grid); default 0.05 CUDA, 0.1 CPU")
    p.add_argument("--timed", type=int, default=None, help="timed sampler steps per call")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (median)")
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
    for name in ("batch", "steps", "timed", "repeats", "metric_num"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive int, got {value}")
    return args


def settings(args, device: torch.device) -> dict:
    """Fill the device-dependent defaults."""
    cuda = device.type == "cuda"
    model = (f"checkpoint {Path(args.ckpt).name}" if args.ckpt
             else args.model or ("SiT-XL/2" if cuda else "FMNIST-S/2"))
    return {
        "model": model,
        "batch": args.batch or (64 if cuda else 4 if args.quick else 8),
        "step": args.step or (0.25 if args.quick else 0.05 if cuda else 0.1),
        "timed": args.timed or (2 if cuda else 1),
        "repeats": args.repeats or ((3 if args.quick else 5) if cuda else (1 if args.quick else 3)),
        "warmup": 1 if cuda else 0,  # per cell; new shapes autotune Triton kernels on CUDA
        "dtype": common.DTYPES[args.dtype or ("bf16" if cuda else "fp32")],
        "scale": args.scale,
    }


def per_step(t: common.Timing, timed: int) -> common.Timing:
    return common.Timing(tuple(x / timed for x in t.times))


def interleaved(model, guidances, s, device, packed_flags, warmup) -> list[common.Timing]:
    """Per-step timings of sampling with each guidance, timed round-robin."""
    fns = [common.sampling_fn(model, g, s["batch"], s["timed"], device, s["dtype"], packed=p)
           for g, p in zip(guidances, packed_flags)]
    timings = common.time_interleaved(fns, device, s["repeats"], warmup)
    return [per_step(t, s["timed"]) for t in timings]


def cell_key(row: dict) -> tuple:
    return (row["gamma_strong"], row["gamma_weak"])


def run_grid(model, s, device, separate: bool, steps: int, clock: common.Clock | None = None,
             results: common.Results | None = None) -> tuple[list[dict], dict]:
    """Time every valid cell (and the references); returns CSV rows and reference values.

    Each cell is timed round-robin with CFG (and, with `separate`, with its packed forward), and
    its speedup is the median of the per-round ratios. With a `clock`, cells not started before
    its --budget-s is spent are left out (not measured). With `results`, every cell is added to
    it (files rewritten) as soon as it is timed, and cells it already has are not timed again.
    """
    cfg, w = model.config, s["warmup"]
    gammas = common.gamma_values(s["step"])
    packed = not separate
    cfg_guidance, sg_flops = CFG(s["scale"]), SparseGuidance(s["scale"], *SG_FLOPS)
    gflops_cfg = sampling_gflops(cfg, cfg_guidance, steps)
    t_cfg, t_unguided, t_sg_flops = interleaved(
        model, [cfg_guidance, None, sg_flops], s, device, [packed] * 3, (1, 1, 1))
    cfg_times = list(t_cfg.times)

    def references():
        cfg_all = common.Timing(tuple(cfg_times))
        return {
            "unguided": reference_values(s, steps, t_unguided,
                                         common.ratio_median(t_cfg, t_unguided),
                                         sampling_gflops(cfg, None, steps), gflops_cfg),
            "cfg": reference_values(s, steps, cfg_all, 1.0, gflops_cfg, gflops_cfg),
            "sg_flops_0.5_0.9": reference_values(s, steps, t_sg_flops,
                                                 common.ratio_median(t_cfg, t_sg_flops),
                                                 sampling_gflops(cfg, sg_flops, steps),
                                                 gflops_cfg),
        }

    if results is not None:
        results.flush(reference=references())
    rows = []
    for i, g_s in enumerate(gammas):
        for g_w in gammas[i:]:
            if results is not None and results.has((g_s, g_w)):
                continue
            if clock is not None and clock.over_budget():
                break
            guidance = SparseGuidance(s["scale"], g_s, g_w)
            flags = [packed, packed] + ([True] if separate else [])
            t_c, t, *t_packed = interleaved(model, [cfg_guidance] + [guidance] * (len(flags) - 1),
                                            s, device, flags, (0,) + (w,) * (len(flags) - 1))
            cfg_times += t_c.times
            gflops = sampling_gflops(cfg, guidance, steps)
            row = {"gamma_strong": g_s, "gamma_weak": g_w,
                   "ms_per_step": t.median * 1e3, "spread": t.spread,
                   "cfg_ms_per_step": t_c.median * 1e3,
                   "images_per_s": s["batch"] / (steps * t.median),
                   "gflops_per_image_step": gflops,
                   "gflops_full": sampling_gflops(cfg, guidance, steps, convention="full"),
                   "speedup_vs_cfg": common.ratio_median(t_c, t),
                   "predicted_speedup": gflops_cfg / gflops}
            row["realized_fraction"] = row["speedup_vs_cfg"] / row["predicted_speedup"]
            if separate:
                row["packed_gain"] = common.ratio_median(t, t_packed[0])
            rows.append(row)
            if results is not None:
                results.add(row, flush=False)
                results.flush(reference=references(), cells=len(results.rows))
            print(f"γ_s {g_s:4.2f} γ_w {g_w:4.2f}: {row['ms_per_step']:8.1f} ms/step "
                  f"{row['images_per_s']:8.2f} img/s  speedup {row['speedup_vs_cfg']:.2f} "
                  f"(FLOPs {row['predicted_speedup']:.2f})", flush=True)
    return rows, references()


def reference_values(s, steps, t: common.Timing, speedup, gflops, gflops_cfg) -> dict:
    predicted = gflops_cfg / gflops
    return {"ms_per_step": t.median * 1e3, "spread": t.spread,
            "images_per_s": s["batch"] / (steps * t.median),
            "gflops_per_image_step": gflops, "speedup_vs_cfg": speedup,
            "predicted_speedup": predicted, "realized_fraction": speedup / predicted}


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


def plot(rows, reference, s, record, steps, separate, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gammas = common.gamma_values(s["step"])
    ref_u, ref_c, ref_sg = reference["unguided"], reference["cfg"], reference["sg_flops_0.5_0.9"]
    panels = [("images_per_s", f"(a) images/s (CFG {ref_c['images_per_s']:.3g}, "
                               f"unguided {ref_u['images_per_s']:.3g})", "{:.3g}", "viridis", None),
              ("gflops_per_image_step", f"(b) GFLOPs/image/step (CFG "
                                        f"{ref_c['gflops_per_image_step']:.3g}, unguided "
                                        f"{ref_u['gflops_per_image_step']:.3g})", "{:.3g}",
               "magma", None),
              ("speedup_vs_cfg", f"(c) speedup over CFG (unguided "
                                 f"{ref_u['speedup_vs_cfg']:.2f}×; SG 0.5/0.9 "
                                 f"{ref_sg['speedup_vs_cfg']:.2f}×)", "{:.2f}", "viridis", None),
              ("realized_fraction", f"(d) measured / FLOP-predicted speedup (SG 0.5/0.9: "
                                    f"{ref_sg['speedup_vs_cfg']:.2f} / "
                                    f"{ref_sg['predicted_speedup']:.2f})", "{:.2f}", "RdYlGn",
               1.0)]
    if separate:
        panels.append(("packed_gain", "(e) t(separate) / t(packed)", "{:.2f}", "RdYlGn", 1.0))
    cols = 3 if separate else 2
    fig, axes = plt.subplots(2, cols, figsize=(6.2 * cols, 11))
    for ax, (key, title, fmt, cmap, center) in zip(axes.flat, panels):
        common.heatmap(ax, grid_array(rows, gammas, key), gammas, title, fmt, cmap, center)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    m = record["machine"]
    where = m.get("gpu") or m["cpu"]
    mode = "separate forwards" if separate else "packed forward"
    threads = "" if m["device"] != "cpu" else f", {record['cpu_threads']} threads"
    fig.suptitle(
        f"Sparse Guidance γ grid — {record['model']}, batch {s['batch']}, {record['dtype']}, "
        f"backend {record['backend']}, {mode}, ω {s['scale']}\n{where} ({m['device']}{threads}), "
        f"{m['date_utc']} UTC\nper cell {s['repeats']} round(s) of {s['timed']} timed step(s), "
        f"round-robin with CFG; throughput extrapolated to a {steps}-step run; grey: "
        "γ_strong > γ_weak (invalid)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        "timing": (f"per cell {s['repeats']} rounds of CFG and SG timed round-robin, "
                   f"{s['timed']} sampler step(s) per call, {s['warmup']} warm-up call(s); "
                   "medians, speedups the median of per-round ratios; "
                   + ("CUDA events" if device.type == "cuda" else "wall clock")
                   + f"; images/s extrapolated to a {args.steps}-step run"),
        "flops_convention": "paper (linear-layer MACs; attention products excluded)",
        "cells": 0, "cells_valid": n * (n + 1) // 2,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = common.Results(args.out / "gamma_grid.csv", args.out / "gamma_grid.json", record,
                             key=cell_key, resume=args.resume)
    if results.resumed:
        print(f"--resume: {results.resumed} cells kept from {results.csv_path}")
    forced = contextlib.nullcontext() if backend == "auto" else ops.use_backend(backend)
    with forced:
        _, reference = run_grid(model, s, device, args.separate, args.steps, clock, results)
    rows = results.rows
    record.update(reference=reference, cells=len(rows),
                  complete=len(rows) == record["cells_valid"],
                  seconds=clock.seconds())
    results.flush(complete=record["complete"])
    png = plot(rows, reference, s, record, args.steps, args.separate, args.out / "gamma_grid.png")
    if args.metric:
        q_rows, q_ref = quality_grid(model, args, s, device)
        record["quality"] = {"metric": args.metric, "reference_set": args.ref,
                             "images_per_cell": args.metric_num, "grid_step": args.metric_step,
                             "cfg": q_ref["cfg"], "unguided": q_ref["unguided"], "cells": q_rows}
        common.write_csv(args.out / "quality.csv", q_rows)
        plot_quality(q_rows, q_ref, args, record, args.out / "quality.png")
        results.flush(complete=record["complete"])
    c, u, sg = reference["cfg"], reference["unguided"], reference["sg_flops_0.5_0.9"]
    print(f"CFG {c['images_per_s']:.3g} img/s, unguided {u['images_per_s']:.3g} img/s; "
          f"SG 0.5/0.9 {sg['images_per_s']:.3g} img/s = {sg['speedup_vs_cfg']:.2f}× CFG "
          f"(FLOPs predict {sg['predicted_speedup']:.2f}×, realized "
          f"{sg['realized_fraction']:.0%})")
    print(f"wrote {png}, gamma_grid.csv, gamma_grid.json in {args.out} "
          f"({record['seconds']:.0f} s; {record['cells']} of {record['cells_valid']} cells)")
    return record


if __name__ == "__main__":
    sys.exit(0 if main()["complete"] else common.EXIT_PARTIAL)
