"""End-to-end benchmarks: guided sampling (SG vs CFG) and training steps (TREAD vs dense).

Sampling, per batch size, same model and batch for every method, Euler steps of
`sgkernels.sample` (timing: common.time_sampling; throughput B / (steps · t_step), extrapolated
from the timed steps to a `--steps` run):
    unguided D(c) dense · CFG ω dense (2 forwards) · SG_FLOPS γ 0.5/0.9 · CFG+SG direct γ 0.2/0.7
    measured speedup  = t_step(CFG) / t_step(method)
    predicted speedup = GFLOPs(CFG) / GFLOPs(method)      (sgkernels.flops, paper convention)
    realized          = measured / predicted
    packed gain       = t_step(branches as separate forwards) / t_step(one packed forward)
Training, per batch size: one step = flow-matching loss ‖v_θ(x_t, t, y) − (x − z)‖² on random
data, backward, AdamW step; TREAD (train mode: the config's routes, e.g. r_{2→24} at 0.5 on
SiT-XL/2) vs dense (gamma 0), one model and optimizer, timed round-robin. Predicted speedup =
forward GFLOPs dense / routed (the backward costs ≈ 2× the forward in both). Precision: fp32,
pure bf16 (CUDA default) or amp (bf16 autocast); on CUDA also the peak memory of one step above
the resident model + optimizer.
e2e.csv and e2e.json are rewritten after every batch size of each part (common.Results), so a
killed run keeps what it measured; `--resume` keeps the (part, batch) groups of an earlier run
in --out and measures only the missing ones. Exit status 3 (common.EXIT_PARTIAL) when
--budget-s left groups out.
"""
from __future__ import annotations

import argparse
import sys

import common
import torch

from sgkernels import RoutedDiT, presets
from sgkernels.flops import forward_gflops, sampling_gflops
from sgkernels.flow import fm_loss, interpolate
from sgkernels.guidance import CFG, CFGSparseGuidance, SparseGuidance

SCALE = 2.0


def methods() -> dict:
    return {"unguided": None, "cfg": CFG(SCALE), "sg_0.5_0.9": SparseGuidance(SCALE, 0.5, 0.9),
            "cfg+sg_0.2_0.7": CFGSparseGuidance(SCALE, 1.0, 0.2, 0.7, rule="direct")}


def bench_sampling(model, batch, steps, timed, repeats, device, dtype) -> list[dict]:
    """All methods, packed and separate, timed round-robin; speedups are per-round medians."""
    cfg = model.config
    named = list(methods().items())
    fns = [common.sampling_fn(model, g, batch, timed, device, dtype, packed=packed)
           for _, g in named for packed in (True, False)]
    timings = [common.Timing(tuple(t / timed for t in x.times))
               for x in common.time_interleaved(fns, device, repeats)]
    t_cfg = timings[2 * [n for n, _ in named].index("cfg")]
    gflops_cfg = sampling_gflops(cfg, methods()["cfg"], steps)
    rows = []
    for k, (name, guidance) in enumerate(named):
        packed, separate = timings[2 * k], timings[2 * k + 1]
        gflops = sampling_gflops(cfg, guidance, steps)
        row = {"part": "sampling", "method": name, "batch": batch,
               "ms_per_step": packed.median * 1e3, "spread": packed.spread,
               "ms_per_step_separate": separate.median * 1e3,
               "images_per_s": batch / (steps * packed.median),
               "gflops_per_image_step": gflops,
               "speedup_vs_cfg": common.ratio_median(t_cfg, packed),
               "predicted_speedup": gflops_cfg / gflops,
               "packed_gain": common.ratio_median(separate, packed)}
        row["realized_fraction"] = row["speedup_vs_cfg"] / row["predicted_speedup"]
        rows.append(row)
    return rows


def bench_training(config, batch, timed, repeats, device, precision="fp32") -> list[dict]:
    """ms per optimizer step, dense vs TREAD-routed, on one model + AdamW, round-robin.

    precision: "fp32"; "bf16" (weights, optimizer state and activations in bf16); "amp" (fp32
    weights, bf16 autocast). CUDA: also the peak memory a step allocates on top of the
    resident model and optimizer.
    """
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = RoutedDiT(config).to(device=device, dtype=dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, config.in_channels, config.input_size, config.input_size)
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    y = torch.randint(0, config.num_classes, (batch,), generator=gen, device=device)

    def steps(gamma):
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

    variants = (("dense", 0.0), ("tread", None))  # gamma None in train mode: the config's routes
    timings = common.time_interleaved([steps(g) for _, g in variants], device, repeats)
    rows = []
    for (name, gamma), timing in zip(variants, timings):
        t_step = timing.median / timed
        row = {"part": "training", "method": name, "batch": batch, "ms_per_step": t_step * 1e3,
               "spread": timing.spread, "images_per_s": batch / t_step,
               "gflops_per_image_fwd": forward_gflops(config, gamma)}
        if cuda:
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            steps(gamma)()
            torch.cuda.synchronize(device)
            row["step_peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
        rows.append(row)
    dense, tread = rows
    tread["speedup_vs_dense"] = common.ratio_median(timings[0], timings[1])
    tread["predicted_speedup"] = dense["gflops_per_image_fwd"] / tread["gflops_per_image_fwd"]
    tread["realized_fraction"] = tread["speedup_vs_dense"] / tread["predicted_speedup"]
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
    return p.parse_args(argv)


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
    record = {"machine": common.machine_info(device), "model": name, "weights": "random init",
              "steps": args.steps, "timed_steps": timed, "repeats": repeats,
              "sampling_dtype": str(dtype), "training_precision": precision,
              "cpu_threads": threads,
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
            rows = bench_sampling(model, batch, args.steps, timed, repeats, device, dtype)
        else:
            model = None  # free the sampling model before training
            rows = bench_training(config, batch, timed, repeats, device, precision)
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
    extra = "separate / packed" if sampling else "step peak GiB"
    print(f"\n| {rows[0]['part']} B={rows[0]['batch']} | ms/step | img/s | measured × | "
          f"FLOP-predicted × | realized | {extra} |\n|---|---|---|---|---|---|---|")
    for r in rows:
        value = r.get("packed_gain" if sampling else "step_peak_mem_gib")
        print(f"| {r['method']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.3g} | "
              f"{r.get(ref, 1.0):.2f} | {r.get('predicted_speedup', 1.0):.2f} | "
              f"{r.get('realized_fraction', 1.0):.0%} | "
              f"{'-' if value is None else format(value, '.2f')} |")


if __name__ == "__main__":
    sys.exit(0 if run()[1] else common.EXIT_PARTIAL)
