"""How the Triton kernels are launched: interpreter switch, launch configs, grids, static specs.

Under TRITON_INTERPRET=1 (kernels run on CPU tensors, DESIGN §7) autotuning over more than one
config fails, so every kernel runs one small fixed config there: either `tuned` returns the plain
kernel and `launch` passes the module's fixed interpreter config, or `autotune_configs` hands the
autotuner that single config. On a GPU the elementwise kernels are autotuned; reductions launch a
fixed function of the shape instead (their summation order must not depend on timing).

Elementwise kernels tile [T, D] rows into [BLOCK_M, BLOCK_D] programs: `tile_grid` is the host
grid, `tile` the program's rows, columns and bounds masks. `ast_spec` is the ahead-of-time
compile specification of a kernel as a real launch specializes it (benchmarks/static_check.py).
"""
import os

import triton
import triton.language as tl
from triton.compiler import ASTSource

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def ast_spec(kernel, signature, constexprs, aligned, num_warps):
    """(name, ASTSource, options) as a real launch specializes `kernel`: the parameters named
    in `aligned` (pointers to 16-byte aligned data, integers divisible by 16) get
    tt.divisibility 16, so the compiler can prove the alignment that 128-bit accesses need."""
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    full = {**signature, **{name: "constexpr" for name in constexprs}}
    src = ASTSource(fn=kernel, signature=full, constexprs=constexprs, attrs=attrs)
    return kernel.__name__, src, {"num_warps": num_warps}


def tuned(kernel, configs, key, prune=None):
    """`kernel` autotuned over `configs` (keyed on the arguments `key`, optional early pruning) on
    GPU; the plain kernel under the interpreter, where autotuning does not work (callers then pass
    a fixed config through `launch`)."""
    if INTERPRET:
        return kernel
    prune_by = {"early_config_prune": prune} if prune is not None else None
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_by)(kernel)


def launch(kernel, grid, interpret_config, *args, **constexprs):
    """kernel[grid](*args, **constexprs) for a kernel made by `tuned`; under the interpreter the
    fixed `interpret_config` (meta-parameters and num_warps) is passed as well."""
    kernel[grid](*args, **constexprs, **(interpret_config if INTERPRET else {}))


def autotune_configs(gpu_configs, interpret_config):
    """`gpu_configs` on a GPU; the single `interpret_config` under TRITON_INTERPRET=1.

    Each config is (meta-parameter dict, num_warps, num_stages).
    """
    chosen = [interpret_config] if INTERPRET else gpu_configs
    return [triton.Config(dict(meta), num_warps=w, num_stages=s) for meta, w, s in chosen]


def tile_grid(rows, cols, block_cols="BLOCK_D"):
    """Grid of [BLOCK_M, block_cols] tiles over a [rows, cols] array (meta-parameters from the
    autotuner or the fixed config)."""
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(cols, meta[block_cols]))


@triton.jit
def tile(M, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile of program (i, j) of a `tile_grid` over [M, D]: rows [BLOCK_M], cols [BLOCK_D],
    row_ok [BLOCK_M] (rows < M) and mask [BLOCK_M, BLOCK_D] (inside [M, D])."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < M
    return rows, cols, row_ok, row_ok[:, None] & (cols < D)[None, :]
