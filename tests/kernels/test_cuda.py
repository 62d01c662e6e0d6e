"""CUDA C++ backend (sgkernels._C via sgkernels.kernels.cuda) vs the torch reference.

Outputs and every gradient over odd shapes and fp32 / fp16 / bf16, covering each kernel path:
16-byte vectors and the scalar fallback (odd widths, misaligned pointers), warp-sized and
block-sized row groups, K > 1 vectors per thread, segments that are empty or cross reduction
groups, and the Triton fallback above MAX_ROW_DIM. Outputs are allocated from CUDA memory
poisoned with NaN, so an element a kernel never writes fails; weight / segment gradients must be
bitwise reproducible. GPU tests are skipped without CUDA (tests/conftest.py)."""
import inspect
import re
from pathlib import Path

import pytest
import torch

from sgkernels import ops
from sgkernels.kernels import cuda
from sgkernels.kernels import torch as reference
from sgkernels.ops import validate

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEV = "cuda"
BACKEND_FUNCTIONS = [name for name in cuda.__all__ if name.endswith(("_fwd", "_bwd"))]


def _poisoned(fn, *args, value=float("nan")):
    """fn(*args) with every CUDA allocation served from a fresh private memory pool whose memory
    was first filled with `value` (NaN; small blocks: 2 MiB segments of two 1 MiB blocks; large: a
    20 MiB segment of 2 MiB blocks and a 64 MiB block), so an output element the C++ op never
    writes stays NaN and fails the comparison."""
    pool = torch.cuda.MemPool()
    with torch.cuda.use_mem_pool(pool):
        blocks = [torch.full((n,), value, device=DEV)
                  for n in [1 << 18] * 16 + [1 << 19] * 10 + [1 << 24]]
        del blocks
        probe = torch.empty(1000, device=DEV)
        poisoned = probe.isnan() if value != value else probe == value
        assert bool(poisoned.all()), "the memory pool did not hand out poisoned memory"
        del probe
        return fn(*args)


def _seg(lengths):
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                   counts).to(DEV)


def _randn(*shape, dtype, gen, scale=1.0, offset=0.0):
    return (torch.randn(*shape, generator=gen) * scale + offset).to(DEV, dtype)


def _misaligned(t):
    """Same values, contiguous, but starting one element past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


# ---- without a GPU ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKEND_FUNCTIONS)
def test_backend_functions_have_reference_signatures(name):
    assert inspect.signature(getattr(cuda, name)) == inspect.signature(getattr(reference, name))


def test_max_row_dim_matches_the_kernels():
    header = (Path(__file__).resolve().parents[2] / "csrc" / "sgk_kernels.h").read_text()
    assert int(re.search(r"SGK_MAX_ROW_DIM = (\d+);", header).group(1)) == cuda.MAX_ROW_DIM


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_unavailable_without_cuda_names_the_reason():
    assert cuda.available() is False
    assert cuda.unavailable_reason()


@pytest.mark.skipif(cuda._load_error() is None, reason="sgkernels._C is built here")
def test_calls_without_extension_raise_with_build_hint():
    with pytest.raises(RuntimeError, match="no-build-isolation"):
        cuda.swiglu_fwd(torch.ones(1, 1), torch.ones(1, 1))


# ---- norms --------------------------------------------------------------------------------------
def _check_rms_norm(rows, dim, dtype, has_weight, assert_matches, misalign=False, eps=1e-6):
    gen = torch.Generator().manual_seed(rows * 7919 + dim)
    x = _randn(rows, dim, dtype=dtype, gen=gen, scale=3, offset=0.5)
    weight = _randn(dim, dtype=dtype, gen=gen) if has_weight else None
    dy = _randn(rows, dim, dtype=dtype, gen=gen)
    if misalign:
        x, dy = _misaligned(x), _misaligned(dy)
    y, rstd = _poisoned(cuda.rms_norm_fwd, x, weight, eps)
    y_ref, rstd_ref = reference.rms_norm_fwd(x, weight, eps)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    dx, dweight = _poisoned(cuda.rms_norm_bwd, dy, x, weight, rstd_ref)
    dx_ref, dweight_ref = reference.rms_norm_bwd(dy, x, weight, rstd_ref)
    assert_matches(dx, dx_ref, "dx")
    if has_weight:
        assert_matches(dweight, dweight_ref, "dweight")
    else:
        assert dweight is None


def _check_modulate(lengths, dim, dtype, has_weight, assert_matches, misalign=False):
    gen = torch.Generator().manual_seed(len(lengths) * 131 + dim)
    seg = _seg(lengths)
    rows, segments = seg.shape[0], len(lengths)
    x = _randn(rows, dim, dtype=dtype, gen=gen, scale=3, offset=0.5)
    weight = _randn(dim, dtype=dtype, gen=gen) if has_weight else None
    shift, scale = (_randn(segments, dim, dtype=dtype, gen=gen) for _ in range(2))
    dy = _randn(rows, dim, dtype=dtype, gen=gen)
    if misalign:
        x, dy, shift = _misaligned(x), _misaligned(dy), _misaligned(shift)
    y, rstd = _poisoned(cuda.rms_norm_modulate_fwd, x, weight, shift, scale, seg, 1e-6)
    y_ref, rstd_ref = reference.rms_norm_modulate_fwd(x, weight, shift, scale, seg, 1e-6)
    assert_matches(y, y_ref, "y")
    assert_matches(rstd, rstd_ref, "rstd")
    grads = _poisoned(cuda.rms_norm_modulate_bwd, dy, x, weight, scale, seg, rstd_ref)
    grads_ref = reference.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
        if want is None:
            assert got is None, name
        else:
            assert_matches(got, want, name)
    return grads


# (rows, dim): warp groups (dim <= 32 vectors), block groups, K = 2 (fp32 at 4096), the scalar
# path with K = 8 (1001, 4095), and the Triton fallback above MAX_ROW_DIM (5000).
NORM_SHAPES = [(1, 1), (7, 33), (13, 64), (37, 1000), (5, 1001), (300, 1152), (3, 4096),
               (4, 4095), (2, 5000)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("rows, dim", NORM_SHAPES)
def test_rms_norm_matches_reference(rows, dim, dtype, has_weight, assert_matches):
    _check_rms_norm(rows, dim, dtype, has_weight, assert_matches)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_misaligned_rows_use_scalar_path(dtype, assert_matches):
    _check_rms_norm(9, 256, dtype, True, assert_matches, misalign=True)
    _check_modulate([4, 0, 5], 256, dtype, True, assert_matches, misalign=True)


# Segments: single rows, empty ones, one long segment spanning many reduction groups (>= 16
# rows each), many short segments inside one group.
MODULATE_CASES = [([1], 1), ([7], 72), ([3, 1, 4], 100), ([2, 0, 5], 1001), ([0, 13], 16),
                  ([100, 0, 37, 250, 1, 60], 1152), ([3] * 50, 384), ([700], 2048),
                  ([2, 3], 5000)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("lengths, dim", MODULATE_CASES)
def test_rms_norm_modulate_matches_reference(lengths, dim, dtype, has_weight, assert_matches):
    _check_modulate(lengths, dim, dtype, has_weight, assert_matches)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_gradients_are_bitwise_deterministic(dtype, assert_matches):
    lengths = [100, 0, 37, 250, 1, 60, 300]
    first = _check_modulate(lengths, 1152, dtype, True, assert_matches)
    second = _check_modulate(lengths, 1152, dtype, True, assert_matches)
    for got, again in zip(first, second):
        assert torch.equal(got, again)
    gen = torch.Generator().manual_seed(3)
    x, dy = (_randn(777, 1000, dtype=dtype, gen=gen) for _ in range(2))
    weight = _randn(1000, dtype=dtype, gen=gen)
    _, rstd = cuda.rms_norm_fwd(x, weight, 1e-6)
    runs = [cuda.rms_norm_bwd(dy, x, weight, rstd)[1] for _ in range(3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_weight", [True, False])
def test_norms_of_width_zero_follow_the_reference(dtype, has_weight):
    """x [M, 0] is a valid input (the torch backend takes it): y and every gradient are empty,
    and rstd is NaN in every row (rsqrt of the mean of no squares plus eps), as in the reference.
    Outputs come from memory poisoned with 0 here, so rstd must be written."""
    seg = _seg([2, 0, 3])
    x, dy = (torch.empty(5, 0, dtype=dtype, device=DEV) for _ in range(2))
    weight = torch.empty(0, dtype=dtype, device=DEV) if has_weight else None
    shift, scale = (torch.empty(3, 0, dtype=dtype, device=DEV) for _ in range(2))
    y, rstd = _poisoned(cuda.rms_norm_fwd, x, weight, 1e-6, value=0.0)
    y_ref, rstd_ref = reference.rms_norm_fwd(x, weight, 1e-6)
    assert y.shape == y_ref.shape and rstd.shape == rstd_ref.shape
    assert bool(rstd_ref.isnan().all()) and bool(rstd.isnan().all()), rstd
    dx, dweight = cuda.rms_norm_bwd(dy, x, weight, rstd_ref)
    assert dx.shape == (5, 0) and (dweight is None if weight is None else dweight.shape == (0,))
    y, rstd = _poisoned(cuda.rms_norm_modulate_fwd, x, weight, shift, scale, seg, 1e-6,
                        value=0.0)
    assert y.shape == (5, 0) and bool(rstd.isnan().all()), rstd
    grads = cuda.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    grads_ref = reference.rms_norm_modulate_bwd(dy, x, weight, scale, seg, rstd_ref)
    for name, got, want in zip(("dx", "dweight", "dshift", "dscale"), grads, grads_ref):
        assert (got is None) == (want is None), name
        if want is not None:
            assert got.shape == want.shape and got.dtype == want.dtype, name
    # the public op (forced to the CUDA backend) with its autograd, as with the torch backend
    for backend in ("cuda", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, shift, scale)]
        with ops.use_backend(backend):
            out = ops.rms_norm_modulate(leaves[0], None, leaves[1], leaves[2], seg)
            out.backward(dy)
        assert out.shape == (5, 0) and [t.grad.shape for t in leaves] == [(5, 0), (3, 0), (3, 0)]


@pytest.mark.gpu
def test_residual_swiglu_and_routing_of_width_zero():
    seg = _seg([2, 0, 3])
    x, gate = torch.empty(5, 0, device=DEV), torch.empty(3, 0, device=DEV)
    assert cuda.gated_residual_fwd(x, x, gate, seg).shape == (5, 0)
    dx, dy, dgate = cuda.gated_residual_bwd(x, x, gate, seg)
    assert dx is x and dy.shape == (5, 0) and dgate.shape == (3, 0)
    assert cuda.swiglu_fwd(x, x).shape == (5, 0)
    cuda.swiglu_bwd(x, x, x, torch.empty_like(x), torch.empty_like(x))
    idx = torch.tensor([3, 0], device=DEV)
    assert cuda.route_gather_fwd(x, idx).shape == (2, 0)
    assert cuda.route_scatter_fwd(x, torch.empty(2, 0, device=DEV), idx).shape == (5, 0)
    dbase, dy = cuda.route_scatter_bwd(x, idx)
    assert dbase.shape == (5, 0) and dy.shape == (2, 0)


# ---- gated residual -----------------------------------------------------------------------------
def _check_gated_residual(lengths, dim, dtype, assert_matches):
    gen = torch.Generator().manual_seed(len(lengths) * 17 + dim)
    seg = _seg(lengths)
    x, y, dout = (_randn(seg.shape[0], dim, dtype=dtype, gen=gen) for _ in range(3))
    gate = _randn(len(lengths), dim, dtype=dtype, gen=gen)
    assert_matches(_poisoned(cuda.gated_residual_fwd, x, y, gate, seg),
                   reference.gated_residual_fwd(x, y, gate, seg), "out")
    dx, dy, dgate = _poisoned(cuda.gated_residual_bwd, dout, y, gate, seg)
    _, dy_ref, dgate_ref = reference.gated_residual_bwd(dout, y, gate, seg)
    assert dx is dout
    assert_matches(dy, dy_ref, "dy")
    assert_matches(dgate, dgate_ref, "dgate")
    return dgate


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths, dim", MODULATE_CASES)
def test_gated_residual_matches_reference(lengths, dim, dtype, assert_matches):
    _check_gated_residual(lengths, dim, dtype, assert_matches)


@pytest.mark.gpu
def test_dgate_is_bitwise_deterministic(assert_matches):
    lengths = [9, 1, 0, 140, 3, 500]
    first = _check_gated_residual(lengths, 1152, torch.float32, assert_matches)
    assert torch.equal(first, _check_gated_residual(lengths, 1152, torch.float32, assert_matches))


# ---- swiglu -------------------------------------------------------------------------------------
def _check_swiglu(rows, hidden, dtype, halves, assert_matches, spare):
    gen = torch.Generator().manual_seed(rows * 31 + hidden)
    ab = _randn(rows, 2 * hidden, dtype=dtype, gen=gen, scale=4)
    a, b = (ab[:, :hidden], ab[:, hidden:]) if halves else (ab[:, :hidden].clone(),
                                                           ab[:, hidden:].clone())
    dout = _randn(rows, hidden, dtype=dtype, gen=gen)
    assert_matches(_poisoned(cuda.swiglu_fwd, a, b), reference.swiglu_fwd(a, b), "out")
    # Gradients land in the halves of one NaN buffer, `spare` columns wider than needed: every
    # element of da, db must be written and the spare columns never touched.
    grad = torch.full((rows, 2 * hidden + spare), float("nan"), dtype=dtype, device=DEV)
    want = torch.empty(rows, 2 * hidden, dtype=dtype, device=DEV)
    assert cuda.swiglu_bwd(dout, a, b, grad[:, :hidden], grad[:, hidden:2 * hidden]) is None
    reference.swiglu_bwd(dout, a, b, want[:, :hidden], want[:, hidden:])
    assert_matches(grad[:, :hidden], want[:, :hidden], "da")
    assert_matches(grad[:, hidden:2 * hidden], want[:, hidden:], "db")
    assert bool(grad[:, 2 * hidden:].isnan().all()), "swiglu_bwd wrote outside da, db"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("halves", [True, False])
@pytest.mark.parametrize("spare", [0, 1])
@pytest.mark.parametrize("rows, hidden", [(1, 1), (7, 33), (16, 64), (5, 1000), (3, 3072),
                                          (2, 2731)])
def test_swiglu_matches_reference(rows, hidden, dtype, halves, spare, assert_matches):
    _check_swiglu(rows, hidden, dtype, halves, assert_matches, spare)


# ---- routing ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("idx_dtype", validate.INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("total, kept, dim", [(1, 1, 1), (10, 4, 33), (100, 37, 1152),
                                              (50, 0, 64), (64, 64, 16), (9, 5, 3)])
def test_routing_matches_reference_exactly(total, kept, dim, dtype, idx_dtype):
    """Every idx dtype the public ops accept (validate.INDEX_DTYPES)."""
    gen = torch.Generator().manual_seed(total * 3 + kept)
    idx = torch.randperm(total, generator=gen)[:kept].to(DEV, idx_dtype)
    x, dout = (_randn(total, dim, dtype=dtype, gen=gen) for _ in range(2))
    y = _randn(kept, dim, dtype=dtype, gen=gen)
    for x_, y_ in ((x, y), (_misaligned(x), _misaligned(y))):
        assert torch.equal(_poisoned(cuda.route_gather_fwd, x_, idx),
                           reference.route_gather_fwd(x_, idx))
        assert torch.equal(_poisoned(cuda.route_scatter_fwd, x_, y_, idx),
                           reference.route_scatter_fwd(x_, y_, idx))
    for got, want in zip(_poisoned(cuda.route_scatter_bwd, dout, idx),
                         reference.route_scatter_bwd(dout, idx)):
        assert torch.equal(got, want)


# ---- errors and the public ops ------------------------------------------------------------------
@pytest.mark.gpu
def test_cpp_ops_reject_bad_arguments_with_typed_errors():
    x = torch.randn(4, 8, device=DEV)
    seg = torch.zeros(4, dtype=torch.int32, device=DEV)
    gate = torch.randn(1, 8, device=DEV)
    with pytest.raises(TypeError, match="seg must be int32"):
        torch.ops.sgkernels_C.gated_residual_fwd(x, x, gate, seg.long())
    with pytest.raises(TypeError, match="idx must be int32 or int64"):
        torch.ops.sgkernels_C.route_gather_fwd(x, seg.short())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.sgkernels_C.rms_norm_fwd(x.double(), None, 1e-6)
    with pytest.raises(ValueError, match="last dimension"):
        torch.ops.sgkernels_C.rms_norm_fwd(torch.randn(2, 5000, device=DEV), None, 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.sgkernels_C.rms_norm_fwd(x.t(), None, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("idx_dtype", validate.INDEX_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_ops_with_cuda_backend(dtype, idx_dtype, assert_matches):
    """The public ops forced to the CUDA backend match the torch backend, output and grads, for
    every index dtype they accept."""
    assert cuda.available(), cuda.unavailable_reason()
    gen = torch.Generator().manual_seed(5)
    seg = _seg([4, 1, 5])
    x, dy = (_randn(10, 48, dtype=dtype, gen=gen) for _ in range(2))
    weight = _randn(48, dtype=dtype, gen=gen)
    shift, scale, gate = (_randn(3, 48, dtype=dtype, gen=gen) for _ in range(3))
    idx = torch.tensor([7, 2, 5], dtype=idx_dtype, device=DEV)
    cases = [
        (lambda x, w: ops.rms_norm(x, w), [x.reshape(2, 5, 48), weight], dy.reshape(2, 5, 48)),
        (lambda x, w, sh, sc: ops.rms_norm_modulate(x, w, sh, sc, seg),
         [x, weight, shift, scale], dy),
        (lambda x, y, g: ops.gated_residual(x, y, g, seg), [x, dy, gate], dy),
        (lambda x: ops.swiglu(x), [x], dy[:, :24].contiguous()),
        (lambda x, y: ops.route_scatter(x, y, idx), [x, dy[:3]], dy),
        (lambda x: ops.route_gather(x, idx), [x], dy[:3]),
    ]
    for fn, inputs, grad in cases:
        results = {}
        for backend in ("cuda", "torch"):
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            with ops.use_backend(backend):
                out = fn(*leaves)
                out.backward(grad)
            results[backend] = [out.detach()] + [t.grad for t in leaves]
        for got, want in zip(results["cuda"], results["torch"]):
            assert_matches(got, want)
