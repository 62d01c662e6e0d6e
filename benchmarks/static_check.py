"""Ahead-of-time sm_90a (H100) check of every Triton kernel, without a GPU.

    python benchmarks/static_check.py [--json PATH] [--only SUBSTRING]

Compiles each (name, ASTSource, options) of `sgkernels.kernels.triton.static_specs()` with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))` (the specs carry the divisibility
attributes a real launch has), then reads the machine code with Triton's bundled tools:
    ptxas -v             registers, stack frame, spill store / load bytes
    cuobjdump -res-usage registers, static shared memory, local memory
    cuobjdump -dump-sass global load / store widths (LDG.E.128 = 128-bit), HGMMA (wgmma) use
Prints one table row per kernel; exits 1 on any compile error or register spill.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
COLUMNS = ("kernel", "warps", "regs", "spill_st", "spill_ld", "stack", "smem", "ldg_bits",
           "ldg128", "stg_bits", "hgmma", "status")


def _run(*args):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


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
    log = _run(BIN / "ptxas", "-v", "--gpu-name=sm_90a", path, "-o", Path(workdir) / "ptxas.o")
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
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("static_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    from sgkernels.kernels.triton import static_specs

    specs = [s for s in static_specs() if args.only is None or args.only in s[0]]
    if not specs:
        sys.exit(f"static_check: no kernel matches --only {args.only!r}")
    rows = [check(name, src, options) for name, src, options in specs]
    print(f"sm_90a static check ({len(rows)} kernels; smem = dynamic shared bytes per launch; "
          "ldg/stg_bits = widest global load/store per thread)")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"target": "sm_90a", "kernels": rows}, indent=2))
    failed = [r["kernel"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
