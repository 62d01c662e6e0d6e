"""Host time per call of the public ops: what a call of `sgkernels.ops` costs beyond its math.

Every op runs on tiny CPU inputs (T 16 tokens in S 2 segments, D 32, H 2 heads of Dh 16, K 8
kept rows), so its arithmetic is negligible and the time is Python and dispatch:
    t_op       one call of the public op (validation, custom-op dispatch, backend choice, value
               checks, the torch backend's function)
    t_backend  the torch backend's function(s) alone on the same inputs
    host       t_op - t_backend: the per-call overhead the op adds
in two modes: `fwd` (no_grad, as in sampling) and `fwd+bwd` (inputs that require grad, the
op's output backpropagated; backend: its fwd and bwd functions). Each time is the median over
--repeats rounds of the mean of --calls calls; within a round the op and its backend alternate,
so load drifts hit both. Writes host.csv and host.json to --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import common
import torch

from sgkernels import ops
from sgkernels.kernels import torch as backend

T, S, D, H, DH, K = 16, 2, 32, 2, 16, 8


def _inputs(grad: bool) -> dict:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_(grad)

    rows, cols = torch.meshgrid(torch.arange(2), torch.arange(T // S // 2), indexing="ij")
    pos = torch.stack((rows.flatten(), cols.flatten()), 1).repeat(S, 1).to(torch.int32)
    return {"x": rand(T, D), "w": rand(D), "shift": rand(S, D), "scale": rand(S, D),
            "y": rand(T, D), "ab": rand(T, 2 * D), "rows": rand(K, D), "heads": rand(T, H, DH),
            "qkv": rand(T, 3, H, DH), "q": rand(T, H, DH), "k": rand(T, H, DH),
            "v": rand(T, H, DH), "seg": torch.arange(S, dtype=torch.int32).repeat_interleave(T // S),
            "cu": torch.tensor([0, T // S, T], dtype=torch.int32), "idx": torch.arange(0, T, 2),
            "kseg": torch.arange(S, dtype=torch.int32).repeat_interleave(K // S), "pos": pos}


def cases() -> dict:
    """op name -> (public call, backend forward call, backend backward call), each a function
    of the inputs dict; the backward call takes (inputs, forward outputs)."""
    eps, rope = 1e-6, 10000.0
    b = backend
    return {
        "rms_norm": (lambda i: ops.rms_norm(i["x"], i["w"]),
                     lambda i: b.rms_norm_fwd(i["x"], i["w"], eps),
                     lambda i, o: b.rms_norm_bwd(i["x"], i["x"], i["w"], o[1])),
        "rms_norm_modulate": (
            lambda i: ops.rms_norm_modulate(i["x"], None, i["shift"], i["scale"], i["seg"]),
            lambda i: b.rms_norm_modulate_fwd(i["x"], None, i["shift"], i["scale"], i["seg"], eps),
            lambda i, o: b.rms_norm_modulate_bwd(i["x"], i["x"], None, i["scale"], i["seg"],
                                                 o[1])),
        "gated_residual": (lambda i: ops.gated_residual(i["x"], i["y"], i["shift"], i["seg"]),
                           lambda i: b.gated_residual_fwd(i["x"], i["y"], i["shift"], i["seg"]),
                           lambda i, o: b.gated_residual_bwd(i["x"], i["y"], i["shift"],
                                                             i["seg"])),
        "swiglu": (lambda i: ops.swiglu(i["ab"]),
                   lambda i: b.swiglu_fwd(i["ab"][:, :D], i["ab"][:, D:]),
                   lambda i, o: b.swiglu_bwd(o, i["ab"][:, :D], i["ab"][:, D:],
                                             torch.empty(T, D), torch.empty(T, D))),
        "route_gather": (lambda i: ops.route_gather(i["x"], i["idx"]),
                         lambda i: b.route_gather_fwd(i["x"], i["idx"]),
                         lambda i, o: b.route_scatter_fwd(torch.zeros(T, D), o, i["idx"])),
        "route_scatter": (lambda i: ops.route_scatter(i["x"], i["rows"], i["idx"]),
                          lambda i: b.route_scatter_fwd(i["x"], i["rows"], i["idx"]),
                          lambda i, o: b.route_scatter_bwd(o, i["idx"])),
        "route_gather_rms_norm_modulate": (
            lambda i: ops.route_gather_rms_norm_modulate(i["x"], i["idx"], None, i["shift"],
                                                         i["scale"], i["kseg"])[1],
            lambda i: b.route_gather_rms_norm_modulate_fwd(i["x"], i["idx"], None, i["shift"],
                                                           i["scale"], i["kseg"], eps),
            lambda i, o: b.route_gather_rms_norm_modulate_bwd(o[0], o[1], o[0], i["idx"], None,
                                                              i["scale"], i["kseg"], o[2], T)),
        "rope_axial": (lambda i: ops.rope_axial(i["heads"], i["pos"]),
                       lambda i: b.rope_axial_fwd(i["heads"], i["pos"], rope),
                       lambda i, o: b.rope_axial_bwd(o, i["pos"], rope)),
        "varlen_attention": (
            lambda i: ops.varlen_attention(i["q"], i["k"], i["v"], i["cu"], T // S),
            lambda i: b.varlen_attention_fwd(i["q"], i["k"], i["v"], i["cu"], T // S, DH ** -0.5),
            lambda i, o: b.varlen_attention_bwd(o[0], i["q"], i["k"], i["v"], o[0], o[1], i["cu"],
                                                T // S, DH ** -0.5)),
        "varlen_attention_qkv": (
            lambda i: ops.varlen_attention_qkv(i["qkv"], i["cu"], T // S, rope=(i["pos"], rope)),
            lambda i: b.varlen_attention_fwd(*i["qkv"].unbind(1), i["cu"], T // S, DH ** -0.5,
                                             (i["pos"], rope)),
            lambda i, o: b.varlen_attention_bwd(o[0], *i["qkv"].unbind(1), o[0], o[1], i["cu"],
                                                T // S, DH ** -0.5, (i["pos"], rope))),
    }


def op_runner(call, inputs, mode):
    """One call of the public op; fwd+bwd also backpropagates ones through its output."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                call(inputs)
        return run

    def run_grad():
        out = call(inputs)
        out.backward(torch.ones_like(out))
    return run_grad


def backend_runner(fwd, bwd, inputs, mode):
    """The backend function(s) the op runs: fwd, or fwd then bwd on its outputs."""
    def run():
        with torch.no_grad():
            out = fwd(inputs)
            if mode != "fwd":
                bwd(inputs, out)
    return run


def time_pair(fns, calls: int, repeats: int) -> list[list[float]]:
    """Seconds per call of each fn, per round: rounds alternate the fns (A, B, A, B, ...)."""
    for fn in fns:
        fn()
    rounds = []
    for _ in range(repeats):
        row = []
        for fn in fns:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            row.append((time.perf_counter() - start) / calls)
        rounds.append(row)
    return rounds


def measure(name, mode, calls, repeats) -> dict:
    call, fwd, bwd = cases()[name]
    inputs = _inputs(mode != "fwd")
    rounds = time_pair([op_runner(call, inputs, mode), backend_runner(fwd, bwd, inputs, mode)],
                       calls, repeats)
    t_op = statistics.median(r[0] for r in rounds)
    t_backend = statistics.median(r[1] for r in rounds)
    host = statistics.median(r[0] - r[1] for r in rounds)
    return {"op": name, "mode": mode, "us_op": t_op * 1e6, "us_backend": t_backend * 1e6,
            "us_host": host * 1e6, "calls": calls, "repeats": repeats}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(p, "outputs/bench_host", device="cpu",
                            device_help="cpu only (the host cost of a call)")
    p.add_argument("--ops", nargs="+", default=None, choices=list(cases()),
                   help="ops to time (default: all)")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=("fwd", "fwd+bwd"))
    p.add_argument("--calls", type=int, default=200, help="calls per round")
    p.add_argument("--repeats", type=int, default=7, help="rounds (median)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device, threads = common.apply_common_flags(args)
    if device.type != "cpu":
        raise SystemExit("bench_host.py: --device must be cpu (it times host work)")
    record = {"machine": common.machine_info(device), "cpu_threads": threads,
              "shapes": {"T": T, "S": S, "D": D, "H": H, "Dh": DH, "K": K},
              "timing": "median over rounds of the mean of --calls calls; op and backend "
                        "alternate within a round"}
    results = common.Results(args.out / "host.csv", args.out / "host.json", record,
                             json_rows=True)
    for mode in args.modes:
        for name in args.ops or list(cases()):
            results.add(measure(name, mode, args.calls, args.repeats))
    results.finish()
    print("| op | mode | µs / call | backend µs | host µs |\n|---|---|---|---|---|")
    for r in results.rows:
        print(f"| {r['op']} | {r['mode']} | {r['us_op']:.1f} | {r['us_backend']:.1f} | "
              f"{r['us_host']:.1f} |")
    return results.rows


if __name__ == "__main__":
    main()
    sys.exit(0)
