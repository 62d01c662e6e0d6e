// Torch bindings of the sgkernels CUDA kernels: the `sgkernels_C` operator namespace.
//
// Each op allocates its outputs (and fp32 workspaces of the two-stage reductions), checks the
// layout the launchers rely on, and launches on the current stream of the input's device.
// sgkernels/kernels/cuda/ calls them as torch.ops.sgkernels_C.<name>; the full argument
// validation of the public ops lives in sgkernels/ops/.
#include <Python.h>

#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sgk_kernels.h"

namespace {

SgkDtype dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return SGK_F32;
    case at::kHalf: return SGK_F16;
    case at::kBFloat16: return SGK_BF16;
    default:
      TORCH_CHECK_TYPE(false, "sgkernels_C: ", name, " must be float32, float16 or bfloat16, got ",
                       t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "sgkernels_C.", op, ": CUDA error: ", cudaGetErrorString(err));
}

void check_rows(const at::Tensor& t, const char* name, int64_t M, int64_t D) {
  TORCH_CHECK_VALUE(t.is_cuda(), "sgkernels_C: ", name, " must be a CUDA tensor");
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == M && t.size(1) == D && t.is_contiguous(),
                    "sgkernels_C: ", name, " must be a contiguous [", M, ", ", D,
                    "] tensor, got shape ", t.sizes(), " strides ", t.strides());
}

void check_weight(const at::Tensor& w, int64_t D) {
  TORCH_CHECK_VALUE(w.is_cuda() && w.dim() == 1 && w.size(0) == D && w.is_contiguous(),
                    "sgkernels_C: weight must be a contiguous CUDA [", D, "] tensor, got shape ",
                    w.sizes(), " strides ", w.strides());
}

void check_seg(const at::Tensor& seg, int64_t M) {
  TORCH_CHECK_TYPE(seg.scalar_type() == at::kInt, "sgkernels_C: seg must be int32, got ",
                   seg.scalar_type());
  TORCH_CHECK_VALUE(seg.is_cuda() && seg.dim() == 1 && seg.size(0) == M && seg.is_contiguous(),
                    "sgkernels_C: seg must be a contiguous CUDA [", M, "] tensor, got shape ",
                    seg.sizes());
}

void check_row_dim(int64_t D, const char* op) {
  TORCH_CHECK_VALUE(D >= 0 && D <= SGK_MAX_ROW_DIM, "sgkernels_C.", op,
                    ": the last dimension must be in [0, ", SGK_MAX_ROW_DIM, "], got ", D);
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

at::Tensor fp32_workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({(int64_t)(bytes / sizeof(float))}, like.options().dtype(at::kFloat));
}

// ---- norms ----------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> norm_fwd(const at::Tensor& x,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& shift,
                                            const std::optional<at::Tensor>& scale,
                                            const std::optional<at::Tensor>& seg, double eps,
                                            const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, "sgkernels_C.", op, ": x must be 2-D, got ", x.sizes());
  const int64_t M = x.size(0), D = x.size(1);
  check_rows(x, "x", M, D);
  check_row_dim(D, op);
  const SgkDtype dt = dtype_of(x, "x");
  if (weight) check_weight(*weight, D);
  if (seg) {
    check_seg(*seg, M);
    check_rows(*shift, "shift", shift->size(0), D);
    check_rows(*scale, "scale", shift->size(0), D);
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({M}, x.options().dtype(at::kFloat));
  check_launch(sgk_rms_norm_fwd(dt, x.data_ptr(), ptr_or_null(weight), ptr_or_null(shift),
                                ptr_or_null(scale),
                                seg ? seg->data_ptr<int32_t>() : nullptr, y.data_ptr(),
                                rstd.data_ptr<float>(), M, D, (float)eps, stream_of(x)),
               op);
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                double eps) {
  return norm_fwd(x, weight, std::nullopt, std::nullopt, std::nullopt, eps, "rms_norm_fwd");
}

std::tuple<at::Tensor, at::Tensor> rms_norm_modulate_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const at::Tensor& shift,
    const at::Tensor& scale, const at::Tensor& seg, double eps) {
  return norm_fwd(x, weight, shift, scale, seg, eps, "rms_norm_modulate_fwd");
}

// Returns (dx, dweight, dshift, dscale); absent results are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_bwd(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& seg,
    const at::Tensor& rstd, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, "sgkernels_C.", op, ": x must be 2-D, got ", x.sizes());
  const int64_t M = x.size(0), D = x.size(1);
  check_rows(x, "x", M, D);
  check_rows(dy, "dy", M, D);
  check_row_dim(D, op);
  TORCH_CHECK_VALUE(rstd.scalar_type() == at::kFloat && rstd.numel() == M && rstd.is_contiguous(),
                    "sgkernels_C.", op, ": rstd must be a contiguous float32 [", M, "] tensor");
  const SgkDtype dt = dtype_of(x, "x");
  const int64_t S = scale ? scale->size(0) : 0;
  if (weight) check_weight(*weight, D);
  if (seg) {
    check_seg(*seg, M);
    check_rows(*scale, "scale", S, D);
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = weight ? at::empty({D}, x.options()) : at::empty({0}, x.options());
  at::Tensor dshift = at::empty({seg ? S : 0, D}, x.options());
  at::Tensor dscale = at::empty({seg ? S : 0, D}, x.options());
  at::Tensor ws = fp32_workspace(x, sgk_rms_norm_bwd_workspace(dt, M, D, S));
  check_launch(sgk_rms_norm_bwd(dt, dy.data_ptr(), x.data_ptr(), ptr_or_null(weight),
                                ptr_or_null(scale), seg ? seg->data_ptr<int32_t>() : nullptr,
                                rstd.data_ptr<float>(), dx.data_ptr(),
                                weight ? dw.data_ptr() : nullptr,
                                seg ? dshift.data_ptr() : nullptr,
                                seg ? dscale.data_ptr() : nullptr, ws.data_ptr<float>(), M, D, S,
                                stream_of(x)),
               op);
  return {dx, dw, dshift, dscale};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                const at::Tensor& rstd) {
  auto r = norm_bwd(dy, x, weight, std::nullopt, std::nullopt, rstd, "rms_norm_bwd");
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rms_norm_modulate_bwd(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const at::Tensor& scale, const at::Tensor& seg, const at::Tensor& rstd) {
  return norm_bwd(dy, x, weight, scale, seg, rstd, "rms_norm_modulate_bwd");
}

// ---- gated residual ---------------------------------------------------------------------------
at::Tensor gated_residual_fwd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                              const at::Tensor& seg) {
  TORCH_CHECK_VALUE(x.dim() == 2, "sgkernels_C.gated_residual_fwd: x must be 2-D");
  const int64_t M = x.size(0), D = x.size(1);
  check_rows(x, "x", M, D);
  check_rows(y, "y", M, D);
  check_rows(gate, "gate", gate.size(0), D);
  check_seg(seg, M);
  const SgkDtype dt = dtype_of(x, "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  check_launch(sgk_gated_residual_fwd(dt, x.data_ptr(), y.data_ptr(), gate.data_ptr(),
                                      seg.data_ptr<int32_t>(), out.data_ptr(), M, D,
                                      stream_of(x)),
               "gated_residual_fwd");
  return out;
}

// Returns (dy, dgate); dx is dout itself.
std::tuple<at::Tensor, at::Tensor> gated_residual_bwd(const at::Tensor& dout, const at::Tensor& y,
                                                      const at::Tensor& gate,
                                                      const at::Tensor& seg) {
  TORCH_CHECK_VALUE(dout.dim() == 2, "sgkernels_C.gated_residual_bwd: dout must be 2-D");
  const int64_t M = dout.size(0), D = dout.size(1), S = gate.size(0);
  check_rows(dout, "dout", M, D);
  check_rows(y, "y", M, D);
  check_rows(gate, "gate", S, D);
  check_seg(seg, M);
  check_row_dim(D, "gated_residual_bwd");
  const SgkDtype dt = dtype_of(dout, "dout");
  c10::cuda::CUDAGuard guard(dout.device());
  at::Tensor dy = at::empty_like(dout);
  at::Tensor dgate = at::empty({S, D}, dout.options());
  at::Tensor ws = fp32_workspace(dout, sgk_gated_residual_bwd_workspace(dt, M, D, S));
  check_launch(sgk_gated_residual_bwd(dt, dout.data_ptr(), y.data_ptr(), gate.data_ptr(),
                                      seg.data_ptr<int32_t>(), dy.data_ptr(), dgate.data_ptr(),
                                      ws.data_ptr<float>(), M, D, S,
                                      stream_of(dout)),
               "gated_residual_bwd");
  return {dy, dgate};
}

// ---- swiglu -------------------------------------------------------------------------------------
void check_row_view(const at::Tensor& t, const char* name, int64_t M, int64_t H) {
  TORCH_CHECK_VALUE(t.is_cuda() && t.dim() == 2 && t.size(0) == M && t.size(1) == H &&
                        (t.stride(1) == 1 || H <= 1) && (t.stride(0) >= H || M <= 1),
                    "sgkernels_C: ", name, " must be a CUDA [", M, ", ", H,
                    "] view with a contiguous last dimension, got shape ", t.sizes(),
                    " strides ", t.strides());
}

at::Tensor swiglu_fwd(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.dim() == 2, "sgkernels_C.swiglu_fwd: a must be 2-D, got ", a.sizes());
  const int64_t M = a.size(0), H = a.size(1);
  check_row_view(a, "a", M, H);
  check_row_view(b, "b", M, H);
  const SgkDtype dt = dtype_of(a, "a");
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({M, H}, a.options());
  check_launch(sgk_swiglu_fwd(dt, a.data_ptr(), b.data_ptr(), out.data_ptr(), M, H, a.stride(0),
                              b.stride(0), stream_of(a)),
               "swiglu_fwd");
  return out;
}

void swiglu_bwd(const at::Tensor& dout, const at::Tensor& a, const at::Tensor& b,
                const at::Tensor& da, const at::Tensor& db) {
  TORCH_CHECK_VALUE(a.dim() == 2, "sgkernels_C.swiglu_bwd: a must be 2-D, got ", a.sizes());
  const int64_t M = a.size(0), H = a.size(1);
  check_rows(dout, "dout", M, H);
  check_row_view(a, "a", M, H);
  check_row_view(b, "b", M, H);
  check_row_view(da, "da", M, H);
  check_row_view(db, "db", M, H);
  const SgkDtype dt = dtype_of(a, "a");
  c10::cuda::CUDAGuard guard(a.device());
  check_launch(sgk_swiglu_bwd(dt, dout.data_ptr(), a.data_ptr(), b.data_ptr(), da.data_ptr(),
                              db.data_ptr(), M, H, a.stride(0), b.stride(0), da.stride(0),
                              db.stride(0), stream_of(a)),
               "swiglu_bwd");
}

// ---- routing ------------------------------------------------------------------------------------
// idx: int32 or int64 (as the public ops accept), passed to the kernels as is.
SgkIndex check_idx(const at::Tensor& idx) {
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kInt || idx.scalar_type() == at::kLong,
                   "sgkernels_C: idx must be int32 or int64, got ", idx.scalar_type());
  TORCH_CHECK_VALUE(idx.is_cuda() && idx.dim() == 1 && idx.is_contiguous(),
                    "sgkernels_C: idx must be a contiguous 1-D CUDA tensor, got shape ",
                    idx.sizes());
  return idx.scalar_type() == at::kInt ? SGK_I32 : SGK_I64;
}

int64_t row_bytes(const at::Tensor& t) { return t.size(1) * (int64_t)t.element_size(); }

at::Tensor route_gather_fwd(const at::Tensor& x, const at::Tensor& idx) {
  TORCH_CHECK_VALUE(x.dim() == 2, "sgkernels_C.route_gather_fwd: x must be 2-D");
  check_rows(x, "x", x.size(0), x.size(1));
  const SgkIndex it = check_idx(idx);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({idx.size(0), x.size(1)}, x.options());
  check_launch(sgk_route_gather(it, x.data_ptr(), idx.data_ptr(), out.data_ptr(), x.size(0),
                                idx.size(0), row_bytes(x), stream_of(x)),
               "route_gather_fwd");
  return out;
}

at::Tensor route_scatter_fwd(const at::Tensor& base, const at::Tensor& y, const at::Tensor& idx) {
  TORCH_CHECK_VALUE(base.dim() == 2, "sgkernels_C.route_scatter_fwd: base must be 2-D");
  const int64_t T = base.size(0), D = base.size(1);
  check_rows(base, "base", T, D);
  const SgkIndex it = check_idx(idx);
  check_rows(y, "y", idx.size(0), D);
  TORCH_CHECK_TYPE(y.scalar_type() == base.scalar_type(),
                   "sgkernels_C.route_scatter_fwd: y must have base's dtype");
  c10::cuda::CUDAGuard guard(base.device());
  at::Tensor out = at::empty_like(base);
  at::Tensor inv = at::empty({T}, base.options().dtype(at::kInt));
  check_launch(sgk_route_scatter(it, base.data_ptr(), y.data_ptr(), idx.data_ptr(),
                                 out.data_ptr(), inv.data_ptr<int32_t>(), T, idx.size(0),
                                 row_bytes(base), stream_of(base)),
               "route_scatter_fwd");
  return out;
}

std::tuple<at::Tensor, at::Tensor> route_scatter_bwd(const at::Tensor& dout,
                                                     const at::Tensor& idx) {
  TORCH_CHECK_VALUE(dout.dim() == 2, "sgkernels_C.route_scatter_bwd: dout must be 2-D");
  const int64_t T = dout.size(0), D = dout.size(1);
  check_rows(dout, "dout", T, D);
  const SgkIndex it = check_idx(idx);
  c10::cuda::CUDAGuard guard(dout.device());
  at::Tensor dbase = at::empty_like(dout);
  at::Tensor dy = at::empty({idx.size(0), D}, dout.options());
  at::Tensor inv = at::empty({T}, dout.options().dtype(at::kInt));
  check_launch(sgk_route_scatter_bwd(it, dout.data_ptr(), idx.data_ptr(), dbase.data_ptr(),
                                     dy.data_ptr(), inv.data_ptr<int32_t>(), T, idx.size(0),
                                     row_bytes(dout), stream_of(dout)),
               "route_scatter_bwd");
  return {dbase, dy};
}

}  // namespace

TORCH_LIBRARY(sgkernels_C, m) {
  m.def("rms_norm_fwd(Tensor x, Tensor? weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor rstd) -> (Tensor, Tensor)");
  m.def("rms_norm_modulate_fwd(Tensor x, Tensor? weight, Tensor shift, Tensor scale, "
        "Tensor seg, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_modulate_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor scale, Tensor seg, "
        "Tensor rstd) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gated_residual_fwd(Tensor x, Tensor y, Tensor gate, Tensor seg) -> Tensor");
  m.def("gated_residual_bwd(Tensor dout, Tensor y, Tensor gate, Tensor seg) -> (Tensor, Tensor)");
  m.def("swiglu_fwd(Tensor a, Tensor b) -> Tensor");
  m.def("swiglu_bwd(Tensor dout, Tensor a, Tensor b, Tensor(a!) da, Tensor(b!) db) -> ()");
  m.def("route_gather_fwd(Tensor x, Tensor idx) -> Tensor");
  m.def("route_scatter_fwd(Tensor base, Tensor y, Tensor idx) -> Tensor");
  m.def("route_scatter_bwd(Tensor dout, Tensor idx) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sgkernels_C, CUDA, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd);
  m.impl("rms_norm_bwd", &rms_norm_bwd);
  m.impl("rms_norm_modulate_fwd", &rms_norm_modulate_fwd);
  m.impl("rms_norm_modulate_bwd", &rms_norm_modulate_bwd);
  m.impl("gated_residual_fwd", &gated_residual_fwd);
  m.impl("gated_residual_bwd", &gated_residual_bwd);
  m.impl("swiglu_fwd", &swiglu_fwd);
  m.impl("swiglu_bwd", &swiglu_bwd);
  m.impl("route_gather_fwd", &route_gather_fwd);
  m.impl("route_scatter_fwd", &route_scatter_fwd);
  m.impl("route_scatter_bwd", &route_scatter_bwd);
}

// `import sgkernels._C` loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
