// gated_residual, forward and backward; math: sgkernels.ops.residual.
//
// Math in fp32. The forward runs one group of tpr threads per row, VEC elements per access. In
// the backward a group owns R consecutive rows and keeps its dgate sums, K vectors per thread,
// in registers (D <= SGK_MAX_ROW_DIM); dgate is reduced by the deterministic two-stage scheme
// of common.cuh. dx is dout itself (the caller's tensor).
#include "common.cuh"

namespace sgk {

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
gated_residual_fwd_kernel(const T* __restrict__ x, const T* __restrict__ y,
                          const T* __restrict__ gate, const int32_t* __restrict__ seg,
                          T* __restrict__ out, int64_t M, int64_t D, int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (row >= M) return;
  const T* gr = gate + (int64_t)seg[row] * D;
  for (int64_t c = (int64_t)lane * VEC; c < D; c += (int64_t)tpr * VEC) {
    float xv[VEC], yv[VEC], gv[VEC];
    load_f<VEC>(x + row * D + c, xv);
    load_f<VEC>(y + row * D + c, yv);
    load_f<VEC>(gr + c, gv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) xv[e] += gv[e] * yv[e];
    store_f<VEC>(out + row * D + c, xv);
  }
}

// Group g owns rows [g*R, (g+1)*R); part: [G + S, D], row g + s holds the group's sum for s.
template <typename T, int VEC, int K>
__global__ void __launch_bounds__(512)
gated_residual_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ y,
                          const T* __restrict__ gate, const int32_t* __restrict__ seg,
                          T* __restrict__ dy, float* __restrict__ part,
                          int64_t M, int64_t D, int tpr, int64_t G, int64_t R) {
  const int lane = threadIdx.x % tpr;
  const int64_t g = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (g >= G) return;  // no collective operations below
  float acc[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k) fill(acc[k], 0.f);
  const int64_t row0 = g * R;
  const int64_t row1 = row0 + R < M ? row0 + R : M;
  int32_t cur = seg[row0];
  for (int64_t row = row0; row < row1; ++row) {
    const int32_t s = seg[row];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (int64_t)(lane + k * tpr) * VEC;
      if (c >= D) continue;
      if (s != cur) {
        store_f32(part + (g + cur) * D + c, acc[k]);
        fill(acc[k], 0.f);
      }
      float dv[VEC], yv[VEC], gv[VEC];
      load_f<VEC>(dout + row * D + c, dv);
      load_f<VEC>(y + row * D + c, yv);
      load_f<VEC>(gate + (int64_t)s * D + c, gv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        acc[k][e] += dv[e] * yv[e];
        gv[e] *= dv[e];
      }
      store_f<VEC>(dy + row * D + c, gv);
    }
    cur = s;
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (int64_t)(lane + k * tpr) * VEC;
    if (c < D) store_f32(part + (g + cur) * D + c, acc[k]);
  }
}

}  // namespace sgk

using namespace sgk;

cudaError_t sgk_gated_residual_fwd(SgkDtype dt, const void* x, const void* y, const void* gate,
                                   const int32_t* seg, void* out, int64_t M, int64_t D,
                                   cudaStream_t stream) {
  if (M == 0 || D == 0) return cudaSuccess;
  const bool al = aligned16(x) && aligned16(y) && aligned16(gate) && aligned16(out);
  const RowPlan p = plan_rows(D, vec_max_of(dt), al, /*keep_in_registers=*/false);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_vec<vmax_of<T>()>(p.vec, [&](auto v) {
      auto kernel = gated_residual_fwd_kernel<T, decltype(v)::value>;
      SGK_LAUNCH(kernel, blocks_for(M, p), p.threads, stream, (const T*)x, (const T*)y,
                 (const T*)gate, seg, (T*)out, M, D, p.tpr);
    });
    return cudaGetLastError();
  });
}

size_t sgk_gated_residual_bwd_workspace(SgkDtype dt, int64_t M, int64_t D, int64_t S) {
  return (size_t)(partition_rows(dt, M, D).groups + S) * D * sizeof(float);
}

cudaError_t sgk_gated_residual_bwd(SgkDtype dt, const void* dout, const void* y,
                                   const void* gate, const int32_t* seg, void* dy, void* dgate,
                                   float* workspace, int64_t M, int64_t D, int64_t S,
                                   cudaStream_t stream) {
  if (D < 0 || D > SGK_MAX_ROW_DIM) return cudaErrorInvalidValue;
  if (D == 0) return cudaSuccess;  // dy and dgate are empty
  const bool al = aligned16(dout) && aligned16(y) && aligned16(gate) && aligned16(dy);
  const RowPlan p = plan_rows(D, vec_max_of(dt), al, /*keep_in_registers=*/true);
  const Partition part = partition_rows(dt, M, D);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (M > 0) {
      dispatch_vec_k<vmax_of<T>()>(p, [&](auto v, auto k) {
        auto kernel = gated_residual_bwd_kernel<T, decltype(v)::value, decltype(k)::value>;
        SGK_LAUNCH(kernel, blocks_for(part.groups, p), p.threads, stream, (const T*)dout,
                   (const T*)y, (const T*)gate, seg, (T*)dy, workspace, M, D, p.tpr,
                   part.groups, part.rows_per_group);
      });
    }
    launch_piece_reduce<T>(workspace, seg, nullptr, (T*)dgate, M, D, part.rows_per_group, 0, S,
                           stream);
    return cudaGetLastError();
  });
}
