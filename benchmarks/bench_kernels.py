"""Kernel benchmarks: every sgkernels op, forward / backward / both, at DiT shapes.

Shapes: width D (1152 = SiT-XL/2, 2048 = TR-DiT-2.5B), H heads (head dim D/H: 72 and 128 at 16
heads), N tokens per image, B images; plus attention-only shapes (varlen_attention, rope_axial)
at other head dims (`--attn-head-dims`, default 64 on CUDA: D = H·64). Largest first: batches in
decreasing order (B 256 × 256 tokens = 65536 rows on CUDA), at each batch the widths in the
order given, then the attention-only head dims; a `--budget-s` cut leaves out the smallest.
Per shape group every op is timed in three layouts of segment lengths:
    dense    B segments of N tokens
    routed   B segments of keep(N, 0.5) tokens                    (TREAD route at 0.5)
    packed   B of keep(N, 0.5) and B of keep(N, 0.9) tokens       (one SG_FLOPS step, 0.5 / 0.9)
route_gather / route_scatter move keep(N, 0.5) of the N tokens of every segment of the layout.

Metrics per (op, mode, shape, implementation), medians over repeats (common.time_fn):
    bytes   each input read once + each output written once (the rooflines in the op docstrings)
    GB/s    bytes / t, and its fraction of the device copy bandwidth measured in this run
    FLOPs   attention only: 4·Σ L²·H·Dh forward (= 4·T·S̄·H·Dh), 2.5× that backward
    TFLOP/s flops / t, and its fraction of the dense matmul rate measured in this run
Implementations: sgkernels with each backend that runs on the device ("sg:torch|triton|cuda",
attention also "sg:flash|torch-varlen" when they import; sg:torch is the reference forward and
backward), the reference forward with autograd backward ("eager"; not for attention, whose
reference is not autograd-safe) and under torch.compile ("compile"), torch natives (F.rms_norm;
SDPA per run of equal-length segments; varlen_attn on CUDA when torch has it), Liger-Kernel's
RMSNorm / SwiGLU when installed.
`x_ref` = t(sg:torch) / t; `x_best` (sg rows) = best t among compile, natives and Liger / t.
torch.compile rows of a shape group are timed after all its other rows (compiling costs seconds
per graph), so a budget cut drops compile baselines before the sgkernels rows of the next shape.
Host work (index lists, SDPA length groups) is done before timing, never inside the timed call.

Output: kernels.csv (one row per case and implementation) and kernels.json (ceilings, settings,
`complete`), both rewritten after every case (common.Results), so a killed run keeps what it
measured; `--resume` keeps the rows of an earlier run in --out and times only the missing cases.
Exit status 3 (common.EXIT_PARTIAL) when --budget-s left cases out.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import sys
from dataclasses import dataclass

import common
import torch
import torch.nn.functional as F

from sgkernels import ops
from sgkernels.kernels import torch as ref
from sgkernels.model import keep_count as keep

MODES = ("fwd", "bwd", "fwdbwd")
LAYOUTS = ("dense", "routed", "packed")
OPS = ("rms_norm", "rms_norm_modulate", "gated_residual", "swiglu", "route_gather",
       "route_scatter", "rope_axial", "varlen_attention")
HEAD_DIM_OPS = ("rope_axial", "varlen_attention")  # the ops whose cost depends on the head dim


def segment_lengths(layout: str, batch: int, tokens: int) -> list[int]:
    gammas = {"dense": (0.0,), "routed": (0.5,), "packed": (0.5, 0.9)}
    if layout not in gammas:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return [keep(tokens, g) for g in gammas[layout] for _ in range(batch)]


@dataclass(frozen=True)
class Shape:
    layout: str
    batch: int
    tokens: int
    dim: int
    heads: int
    dtype: torch.dtype
    device: torch.device

    @property
    def lengths(self) -> list[int]:
        return segment_lengths(self.layout, self.batch, self.tokens)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden(self) -> int:  # SwiGLU width of a Llama block: 8/3·D rounded up to 64
        return 64 * math.ceil(int(self.dim * 8 / 3) / 64)


def make_inputs(op: str, s: Shape, gen: torch.Generator) -> dict:
    """Inputs of `op` on shape `s`: float tensors random normal (drawn on the device: large
    shapes), indices valid; `gen` (CPU) draws the indices and seeds the device generator."""
    lengths = s.lengths
    dgen = torch.Generator(device=s.device).manual_seed(
        int(torch.randint(2 ** 62, (1,), generator=gen)))
    total, nseg = sum(lengths), len(lengths)
    lens = torch.tensor(lengths)
    seg = torch.repeat_interleave(torch.arange(nseg), lens).to(torch.int32)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(torch.int32)

    def rand(*shape):
        return torch.randn(*shape, generator=dgen, device=s.device).to(s.dtype)

    if op == "rms_norm":
        d = {"x": rand(total, s.dim), "weight": rand(s.dim)}
    elif op == "rms_norm_modulate":
        d = {"x": rand(total, s.dim), "weight": rand(s.dim), "shift": rand(nseg, s.dim),
             "scale": rand(nseg, s.dim), "seg": seg}
    elif op == "gated_residual":
        d = {"x": rand(total, s.dim), "y": rand(total, s.dim), "gate": rand(nseg, s.dim),
             "seg": seg}
    elif op == "swiglu":
        d = {"a": rand(total, 2 * s.hidden)}
    elif op in ("route_gather", "route_scatter"):
        # keep(L, 0.5) random rows of every segment, in order (what a TREAD route gathers)
        rows = [start + torch.randperm(n, generator=gen)[:keep(n, 0.5)].sort().values
                for start, n in zip(cu[:-1].tolist(), lengths)]
        idx = torch.cat(rows)
        d = {"x": rand(total, s.dim), "idx": idx} if op == "route_gather" else \
            {"base": rand(total, s.dim), "y": rand(idx.numel(), s.dim), "idx": idx}
    elif op == "rope_axial":
        side = math.isqrt(s.tokens)
        grid = torch.arange(s.tokens)
        pos = torch.stack([grid // side, grid % side], 1).to(torch.int32)
        d = {"x": rand(total, s.heads, s.head_dim),
             "pos": torch.cat([pos[torch.randperm(s.tokens, generator=gen)[:n]] for n in lengths])}
    elif op == "varlen_attention":
        d = {n: rand(total, s.heads, s.head_dim) for n in "qkv"}
        d.update(cu_seqlens=cu, max_seqlen=max(lengths))
    else:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return {k: v.to(s.device) if torch.is_tensor(v) else v for k, v in d.items()}


def grad_names(inputs: dict) -> list[str]:
    return [k for k, v in inputs.items() if torch.is_tensor(v) and v.is_floating_point()]


def sg_call(op: str, i: dict):
    """The public sgkernels op (inputs are in its argument order)."""
    return getattr(ops, op)(*i.values())


def ref_call(op: str, i: dict):
    """The forward of the torch reference (sgkernels.ops.reference), first output only."""
    if op == "rms_norm":
        return ref.rms_norm_fwd(i["x"], i["weight"], 1e-6)[0]
    if op == "rms_norm_modulate":
        return ref.rms_norm_modulate_fwd(*i.values(), 1e-6)[0]
    if op == "swiglu":
        half = i["a"].shape[-1] // 2
        return ref.swiglu_fwd(i["a"][:, :half], i["a"][:, half:])
    if op == "rope_axial":
        return ref.rope_axial_fwd(i["x"], i["pos"], 10000.0)
    if op == "varlen_attention":
        scale = i["q"].shape[-1] ** -0.5
        return ref.varlen_attention_fwd(i["q"], i["k"], i["v"], i["cu_seqlens"],
                                        i["max_seqlen"], scale)[0]
    return getattr(ref, op + "_fwd")(*i.values())


def length_groups(cu_seqlens) -> list[tuple[int, int, int]]:
    """(first row, segments, length) of each run of equal-length consecutive segments; host
    ints (one device-to-host copy: call it before timing)."""
    cu = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    groups, start, j = [], 0, 0
    while j < len(lengths):
        n = 1
        while j + n < len(lengths) and lengths[j + n] == lengths[j]:
            n += 1
        groups.append((start, n, lengths[j]))
        start, j = start + n * lengths[j], j + n
    return groups


def sdpa_grouped(i: dict, groups: list[tuple[int, int, int]] | None = None):
    """SDPA per run of equal-length consecutive segments ([n, H, L, Dh] batches, no padding).
    `groups` (length_groups of the inputs) keeps the host sync out of the call; timed calls
    get it from `sdpa_grouped.prepare`."""
    q, k, v = i["q"], i["k"], i["v"]
    out = []
    for start, n, length in length_groups(i["cu_seqlens"]) if groups is None else groups:
        end = start + n * length
        views = [t[start:end].unflatten(0, (n, length)).transpose(1, 2) for t in (q, k, v)]
        out.append(F.scaled_dot_product_attention(*views).transpose(1, 2).flatten(0, 1))
    return torch.cat(out)


# bench_case calls `fn.prepare(inputs)` once, outside the timed region, where a baseline has it
sdpa_grouped.prepare = lambda i: functools.partial(sdpa_grouped,
                                                   groups=length_groups(i["cu_seqlens"]))


def prepared(fn, inputs: dict):
    """fn with its host-side set-up for `inputs` done (see sdpa_grouped.prepare)."""
    prepare = getattr(fn, "prepare", None)
    return prepare(inputs) if prepare is not None else fn


def natives(op: str, device: torch.device) -> dict:
    """Baselines outside sgkernels that exist for this op and device: name -> fn(inputs)."""
    found = {}
    if op == "rms_norm":
        found["torch:rms_norm"] = lambda i: F.rms_norm(i["x"], i["x"].shape[-1:], i["weight"], 1e-6)
    if op == "varlen_attention":
        found["torch:sdpa_grouped"] = sdpa_grouped
        varlen = importlib.util.find_spec("torch.nn.attention.varlen") is not None
        if varlen and device.type == "cuda":
            from torch.nn.attention.varlen import varlen_attn
            found["torch:varlen_attn"] = lambda i: varlen_attn(
                i["q"], i["k"], i["v"], i["cu_seqlens"], i["cu_seqlens"], i["max_seqlen"],
                i["max_seqlen"])
    if device.type == "cuda" and op in ("rms_norm", "swiglu"):
        if importlib.util.find_spec("liger_kernel") is None:
            return found
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        if op == "rms_norm":
            found["liger"] = lambda i: LigerRMSNormFunction.apply(i["x"], i["weight"], 1e-6)
        else:
            found["liger"] = lambda i: LigerSiLUMulFunction.apply(*i["a"].chunk(2, -1))
    return found


def traffic(op: str, mode: str, i: dict) -> int:
    """Bytes moved by one call (see the roofline in each op's docstring)."""
    size = {k: v.numel() * v.element_size() for k, v in i.items() if torch.is_tensor(v)}
    if op in ("rms_norm", "rms_norm_modulate"):
        x, rows = size["x"], i["x"].shape[0]
        w, sc = size["weight"], size.get("scale", 0)
        stats = 4 * rows + size.get("seg", 0)          # rstd fp32 (+ seg int32)
        fwd = 2 * x + w + size.get("shift", 0) + sc + stats
        bwd = 3 * x + 2 * w + 3 * sc + stats           # dy, x, dx; w, dw; scale, dshift, dscale
    elif op == "gated_residual":
        fwd = 3 * size["x"] + size["gate"] + size["seg"]
        bwd = 3 * size["x"] + 2 * size["gate"] + size["seg"]
    elif op == "swiglu":
        fwd, bwd = 3 * size["a"] // 2, 5 * size["a"] // 2
    elif op == "route_gather":
        rows = i["idx"].numel() * i["x"].shape[1] * i["x"].element_size()
        fwd, bwd = 2 * rows + size["idx"], size["x"] + rows + size["idx"]
    elif op == "route_scatter":
        fwd = bwd = 2 * size["base"] + size["y"] + size["idx"]
    elif op == "rope_axial":
        fwd = bwd = 2 * size["x"] + size["pos"]
    else:  # varlen_attention: q, k, v, o (+ lse); backward also dO, dQ, dK, dV
        lse = 4 * i["q"].shape[0] * i["q"].shape[1]
        fwd, bwd = 4 * size["q"] + lse, 8 * size["q"] + lse
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def attention_flops(mode: str, i: dict) -> float:
    cu = i["cu_seqlens"].tolist()
    _, heads, dh = i["q"].shape
    fwd = 4.0 * sum((b - a) ** 2 for a, b in zip(cu, cu[1:])) * heads * dh
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwdbwd": 3.5 * fwd}[mode]


def runner(fn, inputs: dict, mode: str):
    """A zero-argument callable doing one `mode` step of fn on inputs."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(inputs)
        return run
    leaves = {k: (v.detach().requires_grad_(True) if k in grad_names(inputs) else v)
              for k, v in inputs.items()}
    wrt = [leaves[k] for k in grad_names(inputs)]
    out = fn(leaves)
    dout = torch.randn_like(out)
    if mode == "bwd":
        return lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)
    out = None  # fwdbwd builds a fresh graph per call: free this one

    def run():
        torch.autograd.grad(fn(leaves), wrt, dout)
    return run


def sg_backends(device: torch.device) -> list[str]:
    """sgkernels backends to time on `device`: torch, and on CUDA also triton and cuda."""
    found = ["torch"]
    if device.type != "cuda":
        return found
    try:
        import sgkernels.kernels.triton  # noqa: F401
        found.append("triton")
    except Exception as exc:  # report, keep benchmarking the rest
        print(f"sgkernels Triton backend unavailable: {exc!r}")
    try:
        from sgkernels.kernels import cuda as cuda_backend
        if cuda_backend.available():
            found.append("cuda")
    except Exception as exc:
        print(f"sgkernels CUDA backend unavailable: {exc!r}")
    return found


def attention_libraries(device: torch.device) -> list[str]:
    """Library backends of varlen_attention that import here (CUDA only): flash, torch-varlen."""
    found = []
    for name in ops.dispatch.LIBRARY_BACKENDS if device.type == "cuda" else ():
        try:
            importlib.import_module("sgkernels.kernels." + name.replace("-", "_"))
            found.append(name)
        except ImportError as exc:  # report, keep benchmarking the rest
            print(f"sgkernels {name} backend unavailable: {exc}")
    return found


def implementations(op: str, device: torch.device, compile_ref: bool) -> dict:
    impls = {}
    libraries = attention_libraries(device) if op == "varlen_attention" else []
    for backend in sg_backends(device) + libraries:
        def call(i, backend=backend):
            with ops.use_backend(backend):
                return sg_call(op, i)
        impls[f"sg:{backend}"] = call
    if op != "varlen_attention":  # its reference is not autograd-safe; natives stand in
        impls["eager"] = lambda i: ref_call(op, i)
    if compile_ref:
        compiled = torch.compile(lambda i: ref_call(op, i), dynamic=None)
        impls["compile"] = compiled
    impls.update(natives(op, device))
    return impls


def bench_case(op, mode, shape, impls, ceil, warmup, repeats, gen) -> list[dict]:
    inputs = make_inputs(op, shape, gen)
    total = sum(shape.lengths)
    base = {"op": op, "mode": mode, "layout": shape.layout, "batch": shape.batch,
            "dim": shape.dim, "heads": shape.heads, "head_dim": shape.head_dim,
            "tokens": total, "segments": len(shape.lengths),
            "dtype": str(shape.dtype).removeprefix("torch.")}
    nb = traffic(op, mode, inputs)
    fl = attention_flops(mode, inputs) if op == "varlen_attention" else None
    rows = []
    for name, fn in impls.items():
        row = dict(base, impl=name)
        try:
            run = runner(prepared(fn, inputs), inputs, mode)  # host work before timing
            t = common.time_fn(run, shape.device, warmup, repeats)
        except Exception as exc:  # one failing implementation must not stop the run: record it
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            continue
        row.update(ms=t.median * 1e3, spread=t.spread, bytes=nb, gbps=nb / t.median / 1e9)
        row["frac_copy_bw"] = row["gbps"] / ceil["copy_gbps"]
        if fl is not None:
            row.update(tflops=fl / t.median / 1e12)
            row["frac_matmul"] = row["tflops"] / ceil["matmul_tflops"]
        rows.append(row)
    return rows


def case_key(row: dict) -> tuple:
    """(op, mode, layout, batch, dim, heads): the case a row times."""
    return tuple(row.get(k) for k in ("op", "mode", "layout", "batch", "dim", "heads"))


def add_ratios(rows: list[dict]) -> None:
    """x_ref = t(sg:torch) / t and, on sg rows, x_best = best baseline time / t, per case, over
    every row timed so far (baselines of a case may be timed later, e.g. compile rows)."""
    timed: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if "ms" in r:
            timed.setdefault(case_key(r), {})[r["impl"]] = r["ms"]
    for r in rows:
        if "ms" not in r:
            continue
        case = timed[case_key(r)]
        others = [ms for name, ms in case.items() if not name.startswith(("sg:", "eager"))]
        if "sg:torch" in case:
            r["x_ref"] = case["sg:torch"] / r["ms"]
        if r["impl"].startswith("sg:") and others:
            r["x_best"] = min(others) / r["ms"]


@dataclass(frozen=True)
class Job:
    """One case (op, mode, shape) and the implementations to time on it."""
    op: str
    mode: str
    shape: Shape
    impls: tuple[str, ...]

    def keys(self) -> list[tuple]:
        s = self.shape
        return [(self.op, self.mode, s.layout, s.batch, s.dim, s.heads, name)
                for name in self.impls]


def row_key(row: dict) -> tuple:
    return (*case_key(row), row.get("impl"))


def shape_groups(dims, heads, batches, attn_head_dims, ops) -> list[tuple[int, int, list[str]]]:
    """(batch, dim, ops) per shape group, largest first: batches decreasing, at each batch the
    widths in the given order, then attention-only widths heads·hd for the extra head dims."""
    groups = []
    head_dims = {d // heads for d in dims}
    for batch in sorted(set(batches), reverse=True):
        groups += [(batch, d, list(ops)) for d in dims]
        extra = [o for o in ops if o in HEAD_DIM_OPS]
        groups += [(batch, hd * heads, extra) for hd in attn_head_dims
                   if hd not in head_dims and extra]
    return groups


def plan_jobs(groups, tokens, heads, layouts, modes, impl_names, dtype, device) -> list[Job]:
    """Per shape group: every layout × op × mode with the implementations other than
    `compile`, then the same cases with `compile` alone."""
    jobs = []
    for batch, dim, group_ops in groups:
        cases = [(Shape(layout, batch, tokens, dim, heads, dtype, device), op, mode)
                 for layout in layouts for op in group_ops for mode in modes]
        for s, op, mode in cases:
            names = tuple(n for n in impl_names[op] if n != "compile")
            jobs.append(Job(op, mode, s, names))
        for s, op, mode in cases:
            if "compile" in impl_names[op]:
                jobs.append(Job(op, mode, s, ("compile",)))
    return jobs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(
        p, "outputs/bench_kernels",
        budget_help="stop starting new cases this many seconds after the start",
        resume_help="keep the rows of kernels.csv in --out, time only the missing cases",
        quick_help="tiny shapes (D 128, 4 heads, 64 tokens, batch 4): < 1 minute on CPU")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--dims", nargs="+", type=int, default=None, help="default 1152 2048")
    p.add_argument("--heads", type=int, default=None, help="default 16")
    p.add_argument("--attn-head-dims", nargs="*", type=int, default=None,
                   help="extra head dims timed for attention / rope only (D = heads·hd); "
                        "default 64 (--quick: 16)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per image, default 256")
    p.add_argument("--batches", nargs="+", type=int, default=None,
                   help="default 256 16 on CUDA, 2 on CPU (run largest first)")
    p.add_argument("--dtype", choices=common.DTYPES, default=None,
                   help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile of the reference (default: on CUDA only)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    return p.parse_args(argv)


def settings(args, cuda: bool) -> dict:
    """The device-dependent defaults, validated. CUDA: D 1152 / 2048 at 16 heads (head dims 72
    / 128), attention also at head dim 64, batches 256 then 16 of 256 tokens, bf16."""
    quick = args.quick
    cfg = {
        "dims": args.dims or ([128] if quick else [1152, 2048]),
        "heads": args.heads or (4 if quick else 16),
        "attn_head_dims": args.attn_head_dims if args.attn_head_dims is not None
        else ([16] if quick else [64]),
        "tokens": args.tokens or (64 if quick else 256),
        "batches": args.batches or ([4] if quick else [2] if not cuda else [256, 16]),
        "dtype": common.DTYPES[args.dtype or ("bf16" if cuda and not quick else "fp32")],
        "warmup": args.warmup if args.warmup is not None else (3 if cuda else 1),
        "repeats": args.repeats if args.repeats is not None else (10 if cuda else 3),
        "compile": cuda if args.compile is None else args.compile,
    }
    for d in cfg["dims"]:
        if d % cfg["heads"] or (d // cfg["heads"]) % 4:
            raise ValueError(f"--dims {d} / --heads {cfg['heads']} must give a head dim "
                             "divisible by 4")
    for hd in cfg["attn_head_dims"]:
        if hd < 4 or hd % 4:
            raise ValueError(f"--attn-head-dims {hd} must be a multiple of 4")
    if math.isqrt(cfg["tokens"]) ** 2 != cfg["tokens"]:
        raise ValueError(f"--tokens must be a square (a token grid), got {cfg['tokens']}")
    return cfg


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    clock = common.Clock(args.budget_s)
    device, threads = common.apply_common_flags(args)
    cuda = device.type == "cuda"
    cfg = settings(args, cuda)
    dims, heads, attn_head_dims, tokens, batches, dtype, warmup, repeats, compile_ref = (
        cfg[k] for k in ("dims", "heads", "attn_head_dims", "tokens", "batches", "dtype",
                         "warmup", "repeats", "compile"))

    ceil = {"copy_gbps": common.copy_bandwidth_gbps(device),
            "matmul_tflops": common.matmul_tflops(device)}
    print(f"device {device}: copy {ceil['copy_gbps']:.1f} GB/s, matmul "
          f"{ceil['matmul_tflops']:.2f} TFLOP/s", flush=True)
    gen = torch.Generator().manual_seed(0)
    impls = {op: implementations(op, device, compile_ref) for op in args.ops}
    groups = shape_groups(dims, heads, batches, attn_head_dims, args.ops)
    jobs = plan_jobs(groups, tokens, heads, args.layouts, args.modes,
                     {op: list(v) for op, v in impls.items()}, dtype, device)
    record = {"machine": common.machine_info(device), "ceilings": ceil,
              "args": {k: str(v) for k, v in vars(args).items()}, "dtype": str(dtype),
              "cpu_threads": threads, "warmup": warmup, "repeats": repeats,
              "triton_one_config": os.environ.get("SGKERNELS_TRITON_ONE_CONFIG") == "1",
              "shape_groups": [{"batch": b, "dim": d, "heads": heads, "head_dim": d // heads,
                                "tokens_per_image": tokens, "ops": o} for b, d, o in groups],
              "order": "shape groups largest first; per group layouts x ops x modes, "
                       "torch.compile rows last",
              "cases_planned": sum(len(j.impls) for j in jobs)}
    results = common.Results(args.out / "kernels.csv", args.out / "kernels.json", record,
                             key=row_key, resume=args.resume)
    if results.resumed:
        print(f"--resume: {results.resumed} rows kept from {results.csv_path}")
    skipped = []
    for job in jobs:
        todo = [n for n, k in zip(job.impls, job.keys()) if not results.has(k)]
        if not todo:
            continue
        if clock.over_budget():
            skipped += [dict(zip(("op", "mode", "layout", "batch", "dim", "heads", "impl"), k),
                             error="skipped: --budget-s")
                        for n, k in zip(job.impls, job.keys()) if n in todo]
            continue
        new = bench_case(job.op, job.mode, job.shape, {n: impls[job.op][n] for n in todo},
                         ceil, warmup, repeats, gen)
        results.add(new, flush=False)
        add_ratios(results.rows)
        results.flush(seconds=clock.seconds())
        print_rows(new)
    results.add(skipped, flush=False)
    add_ratios(results.rows)
    results.finish(complete=not skipped, seconds=clock.seconds(),
                   cases_skipped=len(skipped))
    print(f"wrote {results.csv_path} and kernels.json ({record['seconds']:.0f} s"
          f"{f', {len(skipped)} cases left out by --budget-s' if skipped else ''})")
    return results.rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        head = (f"{r['op']:<18} {r['mode']:<6} {r['layout']:<6} B{r['batch']:<4} D{r['dim']:<5}"
                f" H{r.get('heads', '')!s:<3} {r['impl']:<20}")
        if "error" in r:
            print(f"{head} -- {r['error']}")
            continue
        tflops = f" {r['tflops']:8.3g} TFLOP/s" if "tflops" in r else ""
        print(f"{head} {r['ms']:9.3f} ms {r['gbps']:8.1f} GB/s ({r['frac_copy_bw']:.0%}){tflops}"
              f" x_ref {r.get('x_ref', math.nan):.2f}")


if __name__ == "__main__":
    rows = main()
    sys.exit(common.EXIT_PARTIAL if any(str(r.get("error", "")).startswith("skipped")
                                        for r in rows) else 0)
