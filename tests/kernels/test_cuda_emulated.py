"""The CUDA C++ kernels of csrc/, run on the CPU under csrc/emu/cuda_emulation.h, vs the torch
reference: every kernel, both vector widths, warp- and block-sized row groups, K > 1, empty and
group-crossing segments, several reduction partitions.

csrc/*.cu are compiled as plain C++ with g++ (the emulation header supplies threads as fibers,
__syncthreads, __shfl_xor_sync) into a shared library whose C launchers are called through
ctypes on CPU tensors, exactly as csrc/ops.cpp calls them on CUDA tensors. Every output and
the fp32 reduction workspace start as NaN, so an element never written, or a partial sum read
before it was written, fails the comparison. Needs g++ and the CUDA headers (CUDA_HOME)."""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sgkernels.kernels import torch as reference
from sgkernels.kernels.cuda import MAX_ROW_DIM
from sgkernels.ops import validate

ROOT = Path(__file__).resolve().parents[2]
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}   # SgkDtype
IDX_CODE = {torch.int32: 0, torch.int64: 1}                        # SgkIndex
NAN = float("nan")

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or not (CUDA_HOME / "include" / "cuda_runtime.h").exists(),
    reason="needs g++ and the CUDA headers (set CUDA_HOME)")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """Build csrc/*.cu + csrc/emu/runtime.cpp for the host (about 20 s on 2 cores).

    SGK_EMU_ASAN=1 adds AddressSanitizer, which turns an out-of-bounds access (a fault or silent
    corruption on the GPU) into a report; run pytest with
    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0."""
    out = tmp_path_factory.mktemp("cuda_emu") / "libsgk_emu.so"
    sources = sorted(str(p) for p in (ROOT / "csrc").glob("*.cu"))
    asan = ["-g", "-fsanitize=address", "-fno-omit-frame-pointer"] \
        if os.environ.get("SGK_EMU_ASAN") == "1" else []
    cmd = ["g++", "-std=c++17", "-O1", *asan, "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
           f"-I{CUDA_HOME / 'include'}", f"-I{ROOT / 'csrc'}",
           "-include", str(ROOT / "csrc" / "emu" / "cuda_emulation.h"), "-x", "c++", *sources,
           "-x", "none", str(ROOT / "csrc" / "emu" / "runtime.cpp"), "-o", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return Emulated(ctypes.CDLL(str(out)))


class Emulated:
    """Python counterparts of csrc/ops.cpp over the C launchers: NaN-filled outputs and workspaces."""

    def __init__(self, cdll):
        self.c = cdll
        for name in ("sgk_rms_norm_bwd_workspace", "sgk_gated_residual_bwd_workspace"):
            getattr(cdll, name).restype = ctypes.c_size_t
            getattr(cdll, name).argtypes = [ctypes.c_int] + [ctypes.c_int64] * 3

    def set_sm_count(self, n):
        self.c.sgk_emu_set_sm_count(n)

    @staticmethod
    def _arg(a):
        if isinstance(a, torch.Tensor):
            return ctypes.c_void_p(a.data_ptr())
        if a is None:
            return ctypes.c_void_p(None)
        if isinstance(a, float):
            return ctypes.c_float(a)
        return ctypes.c_int64(a) if isinstance(a, int) else a

    def _call(self, name, *args):
        status = getattr(self.c, name)(*map(self._arg, args))
        assert status == 0, f"{name} returned cudaError {status}"

    def rms_norm_fwd(self, x, weight, eps, shift=None, scale=None, seg=None, poison=NAN):
        M, D = x.shape
        y, rstd = torch.full_like(x, poison), torch.full((M,), poison)
        self._call("sgk_rms_norm_fwd", ctypes.c_int(CODE[x.dtype]), x, weight, shift, scale, seg,
                   y, rstd, M, D, float(eps), None)
        return y, rstd

    def rms_norm_bwd(self, dy, x, weight, rstd, scale=None, seg=None):
        (M, D), dt = x.shape, CODE[x.dtype]
        S = scale.shape[0] if seg is not None else 0
        ws = torch.full((self.c.sgk_rms_norm_bwd_workspace(dt, M, D, S) // 4,), NAN)
        dx = torch.full_like(x, NAN)
        dw = torch.full((D,), NAN, dtype=x.dtype) if weight is not None else None
        dshift, dscale = (torch.full((S, D), NAN, dtype=x.dtype) if seg is not None else None
                          for _ in range(2))
        self._call("sgk_rms_norm_bwd", ctypes.c_int(dt), dy, x, weight, scale, seg, rstd, dx, dw,
                   dshift, dscale, ws, M, D, S, None)
        return dx, dw, dshift, dscale

    def gated_residual_fwd(self, x, y, gate, seg):
        out = torch.full_like(x, NAN)
        self._call("sgk_gated_residual_fwd", ctypes.c_int(CODE[x.dtype]), x, y, gate, seg, out,
                   x.shape[0], x.shape[1], None)
        return out

    def gated_residual_bwd(self, dout, y, gate, seg):
        (M, D), S, dt = dout.shape, gate.shape[0], CODE[dout.dtype]
        ws = torch.full((self.c.sgk_gated_residual_bwd_workspace(dt, M, D, S) // 4,), NAN)
        dy, dgate = torch.full_like(dout, NAN), torch.full_like(gate, NAN)
        self._call("sgk_gated_residual_bwd", ctypes.c_int(dt), dout, y, gate, seg, dy, dgate, ws,
                   M, D, S, None)
        return dout, dy, dgate

    def swiglu_fwd(self, a, b):
        out = torch.full(a.shape, NAN, dtype=a.dtype)
        self._call("sgk_swiglu_fwd", ctypes.c_int(CODE[a.dtype]), a, b, out, a.shape[0],
                   a.shape[1], a.stride(0), b.stride(0), None)
        return out

    def swiglu_bwd(self, dout, a, b, da, db):
        self._call("sgk_swiglu_bwd", ctypes.c_int(CODE[a.dtype]), dout, a, b, da, db, a.shape[0],
                   a.shape[1], a.stride(0), b.stride(0), da.stride(0), db.stride(0), None)

    def route_gather_fwd(self, x, idx):
        out = torch.full((idx.shape[0], x.shape[1]), NAN, dtype=x.dtype)
        self._call("sgk_route_gather", ctypes.c_int(IDX_CODE[idx.dtype]), x, idx, out,
                   x.shape[0], idx.shape[0], x.shape[1] * x.element_size(), None)
        return out

    def route_scatter_fwd(self, base, y, idx):
        out = torch.full_like(base, NAN)
        inv = torch.empty(base.shape[0], dtype=torch.int32)
        self._call("sgk_route_scatter", ctypes.c_int(IDX_CODE[idx.dtype]), base, y, idx, out,
                   inv, base.shape[0], idx.shape[0], base.shape[1] * base.element_size(), None)
        return out

    def route_scatter_bwd(self, dout, idx):
        dbase = torch.full_like(dout, NAN)
        dy = torch.full((idx.shape[0], dout.shape[1]), NAN, dtype=dout.dtype)
        inv = torch.empty(dout.shape[0], dtype=torch.int32)
        self._call("sgk_route_scatter_bwd", ctypes.c_int(IDX_CODE[idx.dtype]), dout, idx, dbase,
                   dy, inv, dout.shape[0], idx.shape[0], dout.shape[1] * dout.element_size(),
                   None)
        return dbase, dy


def _seg(lengths):
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), counts)


def _randn(*shape, dtype, gen, scale=1.0, offset=0.0):
    return (torch.randn(*shape, generator=gen) * scale + offset).to(dtype)


def _misaligned(t):
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


# ---- norms --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("rows, dim", [(1, 1), (7, 33), (13, 64), (37, 1000), (5, 1001),
                                       (40, 1152), (3, MAX_ROW_DIM), (2, MAX_ROW_DIM - 1)])
def test_rms_norm(lib, rows, dim, dtype, has_weight, assert_matches):
    gen = torch.Generator().manual_seed(rows * 7919 + dim)
    x = _randn(rows, dim, dtype=dtype, gen=gen, scale=3, offset=0.5)
    weight = _randn(dim, dtype=dtype, gen=gen) if has_weight else None
    dy = _randn(rows, dim, dtype=dtype, gen=gen)
    y, rstd = lib.rms_norm_fwd(x, weight, 1e-6)
    y_ref, rstd_ref = reference.rms_norm_fwd(x, weight, 1e-6)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    dx, dweight, _, _ = lib.rms_norm_bwd(dy, x, weight, rstd_ref)
    dx_ref, dweight_ref = reference.rms_norm_bwd(dy, x, weight, rstd_ref)
    assert_matches(dx, dx_ref, "dx")
    if has_weight:
        assert_matches(dweight, dweight_ref, "dweight")


def _check_modulate(lib, lengths, dim, dtype, has_weight, assert_matches, misalign=False):
    gen = torch.Generator().manual_seed(len(lengths) * 131 + dim)
    seg = _seg(lengths)
    x = _randn(seg.shape[0], dim, dtype=dtype, gen=gen, scale=3, offset=0.5)
    weight = _randn(dim, dtype=dtype, gen=gen) if has_weight else None
    shift, scale = (_randn(len(lengths), dim, dtype=dtype, gen=gen) for _ in range(2))
    dy = _randn(seg.shape[0], dim, dtype=dtype, gen=gen)
    if misalign:
        x, dy, shift = _misaligned(x), _misaligned(dy), _misaligned(shift)
    y, rstd = lib.rms_norm_fwd(x, weight, 1e-6, shift, scale, seg)
    y_ref, rstd_ref = reference.rms_norm_modulate_fwd(x, weight, shift, scale, seg, 1e-6)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    grads = lib.rms_norm_bwd(dy, x, weight, rstd_ref, scale, seg)
    grads_ref = reference.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
        if want is not None:
            assert_matches(got, want, name)


SEGMENT_CASES = [([1], 1), ([7], 72), ([3, 1, 4], 100), ([2, 0, 5], 1001), ([0, 13], 16),
                 ([100, 0, 37, 250, 1, 60], 96), ([3] * 50, 40), ([300], 24)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("lengths, dim", SEGMENT_CASES)
def test_rms_norm_modulate(lib, lengths, dim, dtype, has_weight, assert_matches):
    _check_modulate(lib, lengths, dim, dtype, has_weight, assert_matches)


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_pointers_take_the_scalar_path(lib, dtype, assert_matches):
    _check_modulate(lib, [4, 0, 5], 256, dtype, True, assert_matches, misalign=True)


@pytest.mark.parametrize("sm_count", [1, 3, 64])
def test_reductions_for_every_partition(lib, sm_count, assert_matches):
    """The SM count sets the partition: 600 rows of width 1000 make 4 groups of 150 rows on 1
    SM, 12 of 50 on 3, 38 of 16 on 64. Pieces of one segment in many groups and many segments in
    one group must all sum to the reference."""
    lib.set_sm_count(sm_count)
    try:
        lengths = [1, 0, 130, 2, 2, 200, 0, 5, 100, 160]
        _check_modulate(lib, lengths, 1000, torch.float32, True, assert_matches)
        _check_gated_residual(lib, lengths, 1000, torch.float32, assert_matches)
    finally:
        lib.set_sm_count(4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
def test_norms_of_width_zero_follow_the_reference(lib, dtype, has_weight):
    """x [M, 0] is a valid input (the torch backend takes it): y and every gradient are empty,
    and rstd = rsqrt(mean of no squares + eps) is NaN in every row, as in the reference. rstd
    starts as 0 here, so it must be written."""
    seg = _seg([2, 0, 3])
    x, dy = torch.empty(5, 0, dtype=dtype), torch.empty(5, 0, dtype=dtype)
    weight = torch.empty(0, dtype=dtype) if has_weight else None
    shift, scale = torch.empty(3, 0, dtype=dtype), torch.empty(3, 0, dtype=dtype)
    for mod in (False, True):
        args = (shift, scale, seg) if mod else ()
        y, rstd = lib.rms_norm_fwd(x, weight, 1e-6, *args, poison=0.0)
        y_ref, rstd_ref = (reference.rms_norm_modulate_fwd(x, weight, *args, 1e-6) if mod
                           else reference.rms_norm_fwd(x, weight, 1e-6))
        assert y.shape == y_ref.shape == (5, 0)
        assert rstd_ref.isnan().all() and rstd.isnan().all(), rstd
        grads = lib.rms_norm_bwd(dy, x, weight, rstd_ref, *((scale, seg) if mod else ()))
        grads_ref = (reference.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref) if mod
                     else reference.rms_norm_bwd(dy, x, weight, rstd_ref) + (None, None))
        for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
            assert (got is None) == (want is None), name
            if want is not None:
                assert got.shape == want.shape and got.dtype == want.dtype, name


def test_residual_swiglu_and_routing_of_width_zero(lib):
    seg = _seg([2, 0, 3])
    x, gate = torch.empty(5, 0), torch.empty(3, 0)
    assert lib.gated_residual_fwd(x, x, gate, seg).shape == (5, 0)
    _, dy, dgate = lib.gated_residual_bwd(x, x, gate, seg)
    assert dy.shape == (5, 0) and dgate.shape == (3, 0)
    assert lib.swiglu_fwd(x, x).shape == (5, 0)
    lib.swiglu_bwd(x, x, x, torch.empty(5, 0), torch.empty(5, 0))
    idx = torch.tensor([3, 0], dtype=torch.int64)
    assert lib.route_gather_fwd(x, idx).shape == (2, 0)
    assert lib.route_scatter_fwd(x, torch.empty(2, 0), idx).shape == (5, 0)
    dbase, dy = lib.route_scatter_bwd(x, idx)
    assert dbase.shape == (5, 0) and dy.shape == (2, 0)


# ---- gated residual, swiglu, routing ------------------------------------------------------------
def _check_gated_residual(lib, lengths, dim, dtype, assert_matches):
    gen = torch.Generator().manual_seed(len(lengths) * 17 + dim)
    seg = _seg(lengths)
    x, y, dout = (_randn(seg.shape[0], dim, dtype=dtype, gen=gen) for _ in range(3))
    gate = _randn(len(lengths), dim, dtype=dtype, gen=gen)
    assert_matches(lib.gated_residual_fwd(x, y, gate, seg),
                   reference.gated_residual_fwd(x, y, gate, seg), "out")
    _, dy, dgate = lib.gated_residual_bwd(dout, y, gate, seg)
    _, dy_ref, dgate_ref = reference.gated_residual_bwd(dout, y, gate, seg)
    assert_matches(dy, dy_ref, "dy")
    assert_matches(dgate, dgate_ref, "dgate")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths, dim", SEGMENT_CASES + [([3, 4], MAX_ROW_DIM)])
def test_gated_residual(lib, lengths, dim, dtype, assert_matches):
    _check_gated_residual(lib, lengths, dim, dtype, assert_matches)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("halves", [True, False])
@pytest.mark.parametrize("spare", [0, 1])
@pytest.mark.parametrize("rows, hidden", [(1, 1), (7, 33), (16, 64), (5, 1000), (2, 2731)])
def test_swiglu(lib, rows, hidden, dtype, halves, spare, assert_matches):
    gen = torch.Generator().manual_seed(rows * 31 + hidden)
    ab = _randn(rows, 2 * hidden, dtype=dtype, gen=gen, scale=4)
    a, b = (ab[:, :hidden], ab[:, hidden:]) if halves else (ab[:, :hidden].clone(),
                                                           ab[:, hidden:].clone())
    dout = _randn(rows, hidden, dtype=dtype, gen=gen)
    assert_matches(lib.swiglu_fwd(a, b), reference.swiglu_fwd(a, b), "out")
    grad = torch.full((rows, 2 * hidden + spare), NAN, dtype=dtype)
    want = torch.empty(rows, 2 * hidden, dtype=dtype)
    lib.swiglu_bwd(dout, a, b, grad[:, :hidden], grad[:, hidden:2 * hidden])
    reference.swiglu_bwd(dout, a, b, want[:, :hidden], want[:, hidden:])
    assert_matches(grad[:, :hidden], want[:, :hidden], "da")
    assert_matches(grad[:, hidden:2 * hidden], want[:, hidden:], "db")
    assert bool(grad[:, 2 * hidden:].isnan().all()), "swiglu_bwd wrote outside da, db"


@pytest.mark.parametrize("idx_dtype", validate.INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("total, kept, dim", [(1, 1, 1), (10, 4, 33), (40, 17, 1152),
                                              (20, 0, 64), (16, 16, 16), (9, 5, 3)])
def test_routing_is_exact(lib, total, kept, dim, dtype, idx_dtype):
    """Every idx dtype the public ops accept (validate.INDEX_DTYPES) reaches the kernels as is."""
    gen = torch.Generator().manual_seed(total * 3 + kept)
    idx = torch.randperm(total, generator=gen)[:kept].to(idx_dtype)
    x, dout = (_randn(total, dim, dtype=dtype, gen=gen) for _ in range(2))
    y = _randn(kept, dim, dtype=dtype, gen=gen)
    for x_, y_ in ((x, y), (_misaligned(x), _misaligned(y))):
        assert torch.equal(lib.route_gather_fwd(x_, idx), reference.route_gather_fwd(x_, idx))
        assert torch.equal(lib.route_scatter_fwd(x_, y_, idx),
                           reference.route_scatter_fwd(x_, y_, idx))
    for got, want in zip(lib.route_scatter_bwd(dout, idx), reference.route_scatter_bwd(dout, idx)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("idx_dtype", validate.INDEX_DTYPES)
def test_gather_writes_zero_rows_for_out_of_range_indices(lib, idx_dtype):
    x = torch.randn(4, 8)
    out = lib.route_gather_fwd(x, torch.tensor([2, 9, -1], dtype=idx_dtype))
    assert torch.equal(out[0], x[2]) and not out[1:].any()
