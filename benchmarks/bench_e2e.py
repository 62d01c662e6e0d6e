"""End-to-end benchmarks: guided sampling (SG vs CFG) and training steps (TREAD vs dense), each
eager, compiled and (sampling on CUDA) replayed from CUDA graphs.

Sampling, per batch size, same model and batch for every method, Euler steps of
`sgkernels.sample` (timing: common.time_sampling; throughput B / (steps · t_step), extrapolated
from the timed steps to a `--steps` run):
    unguided D(c) dense · CFG ω dense (2 forwards) · SG_FLOPS γ 0.5/0.9 · CFG+SG direct γ 0.2/0.7
    measured speedup  = t_step(CFG) / t_step(method)            (CFG in the same mode)
    predicted speedup = GFLOPs(CFG) / GFLOPs(method)      (sgkernels.flops, paper convention)
    realized          = measured / predicted
    packed gain       = t_step(branches as separate forwards) / t_step(one packed forward)
    mode gain         = t_step(eager) / t_step(mode), packed
Modes (--modes): eager; compile (a copy of the model with RoutedDiT.compile_blocks, dynamic
token counts; --compile-backend); graphs (CUDA: sample(cuda_graphs=GraphCache()), the graphs
kept across the timed calls, so they are replayed). CUDA, per method and mode: the summed GPU
time of the step's kernels (torch.profiler) against the step's time: kernel_fraction well below
1 means the step is launch-bound (the GPU idles while the host launches).
Training, per batch size: one step = flow-matching loss ‖v_θ(x_t, t, y) − (x − z)‖² on random
data, backward, AdamW step; TREAD (train mode: the config's routes, e.g. r_{2→24} at 0.5 on
SiT-XL/2) vs dense (gamma 0), eager and compiled (each its own model and optimizer), timed
round-robin. Predicted speedup = forward GFLOPs dense / routed (the backward costs ≈ 2× the
forward in both). Precision: fp32, pure bf16 (CUDA default) or amp (bf16 autocast); on CUDA also
the peak memory of one step above the resident model + optimizer.
On CPU the run first sets glibc's malloc to keep freed memory (runtime.memory), as sample()
does: without it every large activation page-faults afresh.
e2e.csv and e2e.json are rewritten after every batch size of each part (common.Results), so a
killed run keeps what it measured; `--resume` keeps the (part, batch) groups of an earlier run
in --out and measures only the missing ones. Exit status 3 (common.EXIT_PARTIAL) when
--budget-s left groups out.
"""
from __future__ import annotations

import argparse
import copy
import sys

import common
import torch

from sgkernels import RoutedDiT, presets
from sgkernels.flops import forward_gflops, sampling_gflops
from sgkernels.flow import fm_loss, interpolate
from sgkernels.guidance import CFG, CFGSparseGuidance, SparseGuidance
from sgkernels.runtime.memory import keep_freed_memory
from sgkernels.sampling.graphs import GraphCache

SCALE = 2.0
MODES = ("eager", "compile", "graphs")


def methods() -> dict:
    return {"unguided": None, "cfg": CFG(SCALE), "sg_0.5_0.9": SparseGuidance(SCALE, 0.5, 0.9),
            "cfg+sg_0.2_0.7": CFGSparseGuidance(SCALE, 1.0, 0.2, 0.7, rule="direct")}


def kernel_ms(fn, steps: int) -> float:
    """GPU time of fn's kernels (and copies) per step: torch.profiler's device times of one
    call, summed."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / steps


def bench_sampling(model, batch, steps, timed, repeats, device, dtype, modes=("eager",),
                   compile_options=None) -> list[dict]:
    """All methods x modes, packed and separate, timed round-robin; speedups are per-round
    medians."""
    cfg = model.config
    named = list(methods().items())
    compiled = None
    if "compile" in modes:
        compiled = copy.deepcopy(model).compile_blocks(**(compile_options or {}))

    def fn(guidance, mode, packed):
        if mode == "graphs":
            return common.sampling_fn(model, guidance, batch, timed, device, dtype,
                                      packed=packed, cuda_graphs=GraphCache())
        return common.sampling_fn(compiled if mode == "compile" else model, guidance, batch,
                                  timed, device, dtype, packed=packed)

    cases = [(name, guidance, mode, packed) for name, guidance in named for mode in modes
             for packed in (True, False)]
    fns = [fn(g, mode, packed) for _, g, mode, packed in cases]
    warmup = [2 if mode == "graphs" else 1 for _, _, mode, _ in cases]   # capture, then replay
    timings = {(name, mode, packed): common.Timing(tuple(t / timed for t in x.times))
               for (name, _, mode, packed), x in
               zip(cases, common.time_interleaved(fns, device, repeats, warmup))}
    gflops_cfg = sampling_gflops(cfg, methods()["cfg"], steps)
    rows = []
    for k, (name, guidance, mode, packed) in enumerate(cases):
        if not packed:
            continue
        t, separate = timings[name, mode, True], timings[name, mode, False]
        gflops = sampling_gflops(cfg, guidance, steps)
        row = {"part": "sampling", "method": name, "mode": mode, "batch": batch,
               "ms_per_step": t.median * 1e3, "spread": t.spread,
               "ms_per_step_separate": separate.median * 1e3,
               "images_per_s": batch / (steps * t.median),
               "gflops_per_image_step": gflops,
               "speedup_vs_cfg": common.ratio_median(timings["cfg", mode, True], t),
               "predicted_speedup": gflops_cfg / gflops,
               "packed_gain": common.ratio_median(separate, t),
               "speedup_vs_eager": common.ratio_median(timings[name, "eager", True], t)}
        row["packed_gain_min"], row["packed_gain_max"] = common.ratio_range(separate, t)
        eager = timings[name, "eager", True]
        row["speedup_vs_eager_min"], row["speedup_vs_eager_max"] = common.ratio_range(eager, t)
        row["realized_fraction"] = row["speedup_vs_cfg"] / row["predicted_speedup"]
        if device.type == "cuda":
            row["kernel_ms_per_step"] = kernel_ms(fns[k], timed)
            row["kernel_fraction"] = row["kernel_ms_per_step"] / row["ms_per_step"]
        rows.append(row)
    return rows


def bench_training(config, batch, timed, repeats, device, precision="fp32", modes=("eager",),
                   compile_options=None) -> list[dict]:
    """ms per optimizer step, dense vs TREAD-routed, eager and compiled (each its own model and
    AdamW), round-robin.

    precision: "fp32"; "bf16" (weights, optimizer state and activations in bf16); "amp" (fp32
    weights, bf16 autocast). CUDA: also the peak memory a step allocates on top of the
    resident model and optimizer.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    eager = RoutedDiT(config).to(device=device, dtype=dtype).train()
    models = {"eager": eager}
    if "compile" in modes:
        models["compile"] = copy.deepcopy(eager).compile_blocks(**(compile_options or {}))
    opts = {mode: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0)
            for mode, m in models.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, config.in_channels, config.input_size, config.input_size)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    y = torch.randint(0, config.num_classes, (batch,), generator=gen, device=device)

    def steps(mode, gamma):
        model, opt = models[mode], opts[mode]

        def run():
            for _ in range(timed):
                z = torch.randn(shape, generator=gen, device=device).to(dtype)
                t = torch.rand(batch, generator=gen, device=device).to(dtype)
                with torch.autocast(device.type, torch.bfloat16, enabled=precision == "amp"):
                    v = model(interpolate(x, z, t), t, y, gamma=gamma, generator=gen)
                loss = fm_loss(v, x, z)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    # gamma None in train mode: the config's routes
    variants = [(mode, name, gamma) for mode in models
                for name, gamma in (("dense", 0.0), ("tread", None))]
    timings = common.time_interleaved([steps(mode, g) for mode, _, g in variants], device,
                                      repeats)
    timing = {(mode, name): t for (mode, name, _), t in zip(variants, timings)}
    rows = []
    for (mode, name, gamma), t in zip(variants, timings):
        t_step = t.median / timed
        row = {"part": "training", "method": name, "mode": mode, "batch": batch,
               "ms_per_step": t_step * 1e3, "spread": t.spread, "images_per_s": batch / t_step,
               "gflops_per_image_fwd": forward_gflops(config, gamma),
               "speedup_vs_eager": common.ratio_median(timing["eager", name], t)}
        row["speedup_vs_eager_min"], row["speedup_vs_eager_max"] = common.ratio_range(
            timing["eager", name], t)
        if name == "tread":
            dense = forward_gflops(config, 0.0)
            row["speedup_vs_dense"] = common.ratio_median(timing[mode, "dense"], t)
            row["predicted_speedup"] = dense / row["gflops_per_image_fwd"]
            row["realized_fraction"] = row["speedup_vs_dense"] / row["predicted_speedup"]
        if cuda:
            opts[mode].zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            steps(mode, gamma)()
            torch.cuda.synchronize(device)
            row["step_peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
        rows.append(row)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(
        p, "outputs/bench_e2e",
        budget_help="start no new batch size this many seconds after the start",
        resume_help="keep the groups of e2e.csv in --out, measure only the missing ones")
    p.add_argument("--model", default=None, choices=presets.names(),
                   help="default SiT-XL/2 on CUDA, FMNIST-S/2 on CPU (random weights)")
    p.add_argument("--batches", nargs="+", type=int, default=None,
                   help="sampling batch sizes (default CUDA 16 64, CPU 8)")
    p.add_argument("--train-batches", nargs="+", type=int, default=None,
                   help="training batch sizes (default CUDA 32, CPU 8)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--timed", type=int, default=None, help="timed steps per call (CUDA 3, CPU 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (median), default 5")
    p.add_argument("--dtype", default=None, choices=common.DTYPES,
                   help="sampling dtype (CUDA bf16, CPU fp32)")
    p.add_argument("--train-precision", default=None, choices=("fp32", "bf16", "amp"),
                   help="training: fp32, pure bf16, or amp (bf16 autocast, as the trainer); CUDA amp, CPU fp32")
    p.add_argument("--skip", nargs="*", default=[], choices=("sampling", "training"))
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="eager, compile, graphs (CUDA sampling only); default CUDA all three, "
                        "CPU eager compile")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile mode (aot_eager: no code "
                        "generation, for quick checks)")
    args = p.parse_args(argv)
    if args.modes and "eager" not in args.modes:
        p.error("--modes must include eager (the reference of every mode gain)")
    return args


def group_key(row: dict) -> tuple:
    return (row["part"], row["batch"])


def main(argv=None) -> list[dict]:
    return run(argv)[0]


def run(argv=None) -> tuple[list[dict], bool]:
    """main(), also saying whether every planned group was measured (not cut by --budget-s)."""
    args = parse_args(argv)
    clock = common.Clock(args.budget_s)
    device, threads = common.apply_common_flags(args)
    cuda = device.type == "cuda"
    name = args.model or ("SiT-XL/2" if cuda else "FMNIST-S/2")
    config = presets.get(name)
    timed = args.timed or (3 if cuda else 1)
    repeats = args.repeats or 5
    dtype = common.DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    precision = args.train_precision or ("amp" if cuda else "fp32")
    modes = tuple(args.modes or (MODES if cuda else MODES[:2]))
    if "graphs" in modes and not cuda:
        raise SystemExit("bench_e2e.py: --modes graphs needs --device cuda")
    options = {"backend": args.compile_backend}
    malloc = not cuda and keep_freed_memory()
    record = {"machine": common.machine_info(device), "model": name, "weights": "random init",
              "steps": args.steps, "timed_steps": timed, "repeats": repeats,
              "sampling_dtype": str(dtype), "training_precision": precision,
              "cpu_threads": threads, "modes": list(modes),
              "compile_backend": args.compile_backend, "malloc_keeps_freed_memory": malloc,
              "guidance_scale": SCALE,
              "timing": "median over repeats of timed steps; CUDA events on GPU, wall clock on "
                        "CPU; sampling images/s extrapolated to a --steps run"}
    results = common.Results(args.out / "e2e.csv", args.out / "e2e.json", record,
                             key=group_key, resume=args.resume, json_rows=True)
    if results.resumed:
        print(f"--resume: {results.resumed} rows kept from {results.csv_path}")
    plan = []
    if "sampling" not in args.skip:
        plan += [("sampling", b) for b in args.batches or ([16, 64] if cuda else [8])]
    if "training" not in args.skip:
        plan += [("training", b) for b in args.train_batches or ([32] if cuda else [8])]
    todo = [g for g in plan if not results.has(g)]
    left_out, model = [], None
    for part, batch in todo:
        if clock.over_budget():
            left_out.append((part, batch))
            continue
        if part == "sampling":
            if model is None:
                torch.manual_seed(0)
                model = common.build_model(name, None, device, dtype)
            rows = bench_sampling(model, batch, args.steps, timed, repeats, device, dtype,
                                  modes, options)
        else:
            model = None  # free the sampling model before training
            rows = bench_training(config, batch, timed, repeats, device, precision,
                                  tuple(m for m in modes if m != "graphs"), options)
        results.add(rows, flush=False)
        results.flush(seconds=clock.seconds())
        print_table(rows)
    results.finish(complete=not left_out, left_out=[f"{p} batch {b}" for p, b in left_out],
                   seconds=clock.seconds())
    print(f"wrote {args.out}/e2e.csv and e2e.json"
          + (f" ({len(left_out)} groups left out by --budget-s)" if left_out else ""))
    return results.rows, not left_out


def print_table(rows: list[dict]) -> None:
    """Markdown table of one batch size."""
    sampling = rows[0]["part"] == "sampling"
    ref = "speedup_vs_cfg" if sampling else "speedup_vs_dense"
    extra = "separate / packed | kernel fraction" if sampling else "step peak GiB | -"
    print(f"\n| {rows[0]['part']} B={rows[0]['batch']} | mode | ms/step | img/s | measured × | "
          f"FLOP-predicted × | realized | × eager | {extra} |\n"
          f"|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        values = [r.get(k) for k in (("packed_gain", "kernel_fraction") if sampling
                                     else ("step_peak_mem_gib",))]
        cells = " | ".join("-" if v is None else format(v, ".2f") for v in values)
        print(f"| {r['method']} | {r['mode']} | {r['ms_per_step']:.1f} | "
              f"{r['images_per_s']:.3g} | {r.get(ref, 1.0):.2f} | "
              f"{r.get('predicted_speedup', 1.0):.2f} | {r.get('realized_fraction', 1.0):.0%} | "
              f"{r['speedup_vs_eager']:.2f} | {cells}{'' if sampling else ' | -'} |")


if __name__ == "__main__":
    sys.exit(0 if run()[1] else common.EXIT_PARTIAL)
