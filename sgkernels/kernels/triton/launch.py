"""How the Triton kernels are launched: autotuning, the interpreter switch, grids, static specs.

Every autotuned kernel is an `Autotuned`: the plain `@triton.jit` function, its GPU configs
(meta-parameter dict, num_warps, num_stages) and one small interpreter config. A launch picks
the config in this order:
    1. inside `forced_config(i)`: config i of every autotuned kernel (the last one if a kernel
       has fewer), on GPU and under the interpreter alike; the launch is recorded in `LAUNCHED`,
       so a test can run every config of every kernel and check that it did;
    2. under TRITON_INTERPRET=1 (kernels on CPU tensors, as the CPU tests run them): the
       interpreter config (the autotuner cannot time kernels there);
    3. on a GPU: Triton's autotuner over the configs, one autotuner per *size bucket* of the
       launch (`size_bucket`: the problem size rounded up to a power of two), so a config tuned
       on the first call's shape is not reused for a 100x larger one, yet a routed model with
       many token counts tunes at most log2 of them. SGKERNELS_TRITON_ONE_CONFIG=1 keeps only
       the first config of each kernel (bounded compile time for GPU correctness runs).
Reductions are not autotuned at all: they launch a fixed function of the shape, because the
summation order must not depend on timing.

Integer arguments that count rows or tokens are `do_not_specialize` in every kernel: Triton
specializes an int on being 1 or divisible by 16, so a routed batch with a new token count would
otherwise compile the kernel again mid-run. Dims (D, H) and strides stay specialized: 128-bit
loads need their divisibility.

Elementwise kernels tile [T, D] rows into [BLOCK_M, BLOCK_D] programs: `tile_grid` is the host
grid, `tile` the program's rows, columns and bounds masks. `ast_spec` is the ahead-of-time
compile specification of a kernel as a real launch specializes it, `Autotuned.specs` those of an
autotuned kernel at one shape under every config its prune keeps there
(benchmarks/static_check.py compiles them and checks that every config is compiled).
"""
import contextlib
import contextvars
import os

import triton
import triton.language as tl
from triton.compiler import ASTSource

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ONE_CONFIG = os.environ.get("SGKERNELS_TRITON_ONE_CONFIG") == "1"

REGISTRY = {}    # name -> Autotuned, every autotuned kernel of the backend
LAUNCHED = set()  # (name, config index) of the launches made under forced_config
_forced = contextvars.ContextVar("sgkernels_triton_forced_config", default=None)


def size_bucket(n):
    """The autotuning bucket of problem size n: n rounded up to a power of two (at least 1)."""
    return triton.next_power_of_2(max(int(n), 1))


@contextlib.contextmanager
def forced_config(index):
    """Launch every autotuned kernel with its config `index` (clamped to its last config)."""
    token = _forced.set(int(index))
    try:
        yield
    finally:
        _forced.reset(token)


class Autotuned:
    """`kernel` with GPU `configs` [(meta, num_warps, num_stages)], autotuned on GPU over the
    arguments named in `key` plus the launch's size bucket; `interpret_config` under the
    interpreter. `name` (default: the kernel's) tells apart two config lists of one kernel.
    `restore`: the tensor arguments that the autotuner saves before and restores after each timed
    run (a kernel that may write its input in place)."""

    def __init__(self, kernel, configs, key, interpret_config, prune=None, name=None,
                 restore=None):
        self.fn = kernel
        self.name = name or kernel.__name__
        self.configs = list(configs)
        self.key = list(key)
        self.interpret_config = interpret_config
        self.prune = prune
        self.restore = list(restore or ())
        self._tuners = {}
        if self.name in REGISTRY:
            raise ValueError(f"two autotuned kernels named {self.name!r}")
        REGISTRY[self.name] = self

    def _triton_configs(self):
        return [triton.Config(dict(m), num_warps=w, num_stages=s) for m, w, s in self.configs]

    def _tuner(self, bucket):
        tuner = self._tuners.get(bucket)
        if tuner is None:
            configs = self._triton_configs()[:1 if ONE_CONFIG else None]
            prune = {"early_config_prune": self.prune} if self.prune and len(configs) > 1 else None
            tuner = triton.autotune(configs=configs, key=self.key, prune_configs_by=prune,
                                    restore_value=self.restore or None)(self.fn)
            self._tuners[bucket] = tuner
        return tuner

    def kept(self, **constexprs):
        """Indices of the configs that the autotuner tries for a launch with these constexprs
        (the prune's choice; every config without a prune)."""
        if self.prune is None:
            return list(range(len(self.configs)))
        configs = self._triton_configs()
        kept = {id(c) for c in self.prune(configs, {}, **constexprs)}
        return [i for i, c in enumerate(configs) if id(c) in kept]

    def specs(self, signature, constexprs, aligned, tag=""):
        """`ast_spec` of the kernel at one shape under every config `kept` there, named
        self.name + tag + [config index] (for benchmarks/static_check.py)."""
        specs = []
        for i in self.kept(**constexprs):
            meta, warps, stages = self.configs[i]
            specs.append(ast_spec(self.fn, signature, {**constexprs, **meta}, aligned, warps,
                                  stages, f"{self.name}{tag}[{i}]"))
        return specs

    def launch(self, grid, size, *args, **constexprs):
        """self.fn[grid](*args, **constexprs) with the config chosen as in the module docstring;
        `size` is the problem size whose bucket keys the autotuner (rows, tokens, ...)."""
        forced = _forced.get()
        if forced is not None:
            index = min(forced, len(self.configs) - 1)
            LAUNCHED.add((self.name, index))
            meta, warps, stages = self.configs[index]
        elif INTERPRET:
            meta, warps, stages = self.interpret_config
        else:
            return self._tuner(size_bucket(size))[grid](*args, **constexprs)
        return self.fn[grid](*args, **constexprs, **meta, num_warps=warps, num_stages=stages)


def unspecialized(kernel):
    """Names of the arguments that a launch of `kernel` never specializes (do_not_specialize),
    for the compiled and the interpreted kernel alike."""
    given = getattr(kernel, "do_not_specialize", None)
    if given is None:  # InterpretedFunction keeps its jit options in kwargs
        given = kernel.kwargs.get("do_not_specialize")
    return {kernel.arg_names[n] if isinstance(n, int) else n for n in given or ()}


def ast_spec(kernel, signature, constexprs, aligned, num_warps, num_stages=3, name=None):
    """(name, ASTSource, options) as a real launch specializes `kernel`: the parameters named
    in `aligned` (pointers to 16-byte aligned data, integers divisible by 16) get
    tt.divisibility 16, so the compiler can prove the alignment that 128-bit accesses need;
    `unspecialized` arguments never get it, as at a launch. num_stages 3 is Triton's default."""
    hinted = [n for n in aligned if n not in unspecialized(kernel)]
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    full = {**signature, **{n: "constexpr" for n in constexprs}}
    src = ASTSource(fn=kernel, signature=full, constexprs=constexprs, attrs=attrs)
    return name or kernel.__name__, src, {"num_warps": num_warps, "num_stages": num_stages}


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
