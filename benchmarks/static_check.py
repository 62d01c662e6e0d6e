"""Ahead-of-time sm_90a (H100) check of every Triton kernel under every launch config, no GPU.

    python benchmarks/static_check.py [--json PATH] [--only SUBSTRING] [--jobs N]

Compiles each (name, ASTSource, options) of `sgkernels.kernels.triton.static_specs()` with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))` (the specs carry the divisibility
attributes a real launch has; `Autotuned.specs` gives an autotuned kernel one spec per config),
then reads the machine code with Triton's bundled tools:
    ptxas -v             registers, stack frame, spill store / load bytes (the bundled ptxas
                         that accepts the PTX's ISA version: Triton 3.9 emits PTX 9.x, which
                         its legacy `ptxas` rejects and `ptxas-blackwell` takes)
    cuobjdump -res-usage registers, static shared memory, local memory
    cuobjdump -dump-sass global load / store widths (LDG.E.128 = 128-bit), HGMMA (wgmma) use
Prints one table row per kernel and config; exits 1 on any compile error or register spill, and
when a config of an autotuned kernel is compiled at no shape (a new kernel or config needs a spec).
"""
import argparse
import functools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import ptx_get_version

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_SPECS = []  # the specs being checked, inherited by the forked workers
COLUMNS = ("kernel", "warps", "regs", "spill_st", "spill_ld", "stack", "smem", "ldg_bits",
           "ldg128", "stg_bits", "hgmma", "status")


def _run(*args):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{Path(args[0]).name}: {(out.stderr or out.stdout).strip()}")
    return out.stdout + out.stderr


@functools.cache
def _newest_isa(ptxas):
    """The newest PTX ISA (e.g. 87 for 8.7) that `ptxas` accepts, from its CUDA release."""
    release = re.search(r"release (\d+\.\d+)", _run(ptxas, "--version"))
    return ptx_get_version(release.group(1))


def _ptxas(ptx):
    """The bundled ptxas that accepts the ISA version (`.version X.Y`) of `ptx`: the plain
    `ptxas` when it can, else a newer one shipped beside it (ptxas-blackwell, ...)."""
    major, minor = re.search(r"^\s*\.version (\d+)\.(\d+)", ptx, re.M).groups()
    tools = sorted(BIN.glob("ptxas*"), key=lambda p: (p.name != "ptxas", p.name))
    for tool in tools:
        if _newest_isa(tool) >= 10 * int(major) + int(minor):
            return tool
    raise RuntimeError(f"no ptxas in {BIN} accepts PTX ISA {major}.{minor}: "
                       f"{', '.join(p.name for p in tools)}")


def _width(op):
    """Bits moved per thread by one SASS LDG/STG opcode such as LDG.E.128 or STG.E.U16."""
    for suffix, bits in ((".128", 128), (".64", 64), (".U16", 16), (".S16", 16), (".U8", 8),
                         (".S8", 8)):
        if suffix in op:
            return bits
    return 32


def _ptxas_stats(ptx, workdir):
    path = Path(workdir) / "kernel.ptx"
    path.write_text(ptx)
    log = _run(_ptxas(ptx), "-v", "--gpu-name=sm_90a", path, "-o", Path(workdir) / "ptxas.o")
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      log)
    regs = re.search(r"Used (\d+) registers", log)
    if frame is None or regs is None:
        raise RuntimeError(f"unexpected ptxas -v output:\n{log}")
    return {"regs": int(regs.group(1)), "stack": int(frame.group(1)),
            "spill_st": int(frame.group(2)), "spill_ld": int(frame.group(3))}


def _sass_stats(cubin, workdir):
    path = Path(workdir) / "kernel.cubin"
    path.write_bytes(cubin)
    usage = _run(BIN / "cuobjdump", "-res-usage", path)
    shared = re.search(r"SHARED:(\d+)", usage)
    sass = _run(BIN / "cuobjdump", "-sass", path)
    loads = re.findall(r"\bLDG\.[A-Z0-9.]+", sass)
    stores = re.findall(r"\bSTG\.[A-Z0-9.]+", sass)
    return {"static_smem": int(shared.group(1)) if shared else 0,
            "ldg_bits": max((_width(op) for op in loads), default=0),
            "ldg128": sum(_width(op) == 128 for op in loads),
            "stg_bits": max((_width(op) for op in stores), default=0),
            "hgmma": "HGMMA" in sass}


def configs_compiled(specs):
    """The (launch.REGISTRY name, config index) pairs that `specs` compile: a spec of the entry's
    kernel whose constexprs, num_warps and num_stages are those of the config."""
    from sgkernels.kernels.triton.launch import REGISTRY

    compiled = set()
    for _, src, options in specs:
        given = {src.fn.arg_names[key[0]]: value for key, value in src.constants.items()}
        compiled |= {(entry.name, i) for entry in REGISTRY.values() if entry.fn is src.fn
                     for i, (meta, warps, stages) in enumerate(entry.configs)
                     if all(given.get(k) == v for k, v in meta.items())
                     and (options["num_warps"], options.get("num_stages", 3)) == (warps, stages)}
    return compiled


def check(name, src, options):
    """One row of the table: compile `src` for sm_90a and measure it."""
    row = {"kernel": name, "warps": options.get("num_warps", 4)}
    try:
        compiled = triton.compile(src, target=TARGET, options=options)
        with tempfile.TemporaryDirectory() as workdir:
            row.update(_ptxas_stats(compiled.asm["ptx"], workdir))
            row.update(_sass_stats(compiled.asm["cubin"], workdir))
        row["smem"] = compiled.metadata.shared
    except Exception as exc:  # report every kernel, fail at the end
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    row["status"] = "spill" if row["spill_st"] or row["spill_ld"] else "ok"
    return row


def _check_spec(index):
    return check(*_SPECS[index])


def _table(rows):
    cells = [[str(row.get(c, "-")) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    parser.add_argument("--only", metavar="SUBSTRING", help="check kernels whose name contains it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="compile in this many processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("static_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    from sgkernels.kernels.triton import static_specs
    from sgkernels.kernels.triton.launch import REGISTRY

    specs = static_specs()
    compiled = configs_compiled(specs)
    _SPECS[:] = [s for s in specs if args.only is None or args.only in s[0]]
    if not _SPECS:
        sys.exit(f"static_check: no kernel matches --only {args.only!r}")
    # forked workers inherit _SPECS (an ASTSource does not pickle)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        rows = list(pool.map(_check_spec, range(len(_SPECS))))
    print(f"sm_90a static check, Triton {triton.__version__} ({len(rows)} kernel configs; smem = "
          "dynamic shared bytes per launch; ldg/stg_bits = widest global load/store per thread)")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"target": "sm_90a", "kernels": rows}, indent=2))
    failed = [r["kernel"] for r in rows if r["status"] != "ok"]
    failed += [f"{name}[{i}] (no spec)" for name, entry in REGISTRY.items()
               for i in range(len(entry.configs))
               if (name, i) not in compiled and args.only is None]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
