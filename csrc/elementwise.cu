// Fused elementwise ops of the DiT blocks: adaLN-Zero gated residual and SwiGLU.
//
//   gated_residual: out = x + gate[seg] * y
//     backward: dx = dout (the caller's tensor), dy = dout * gate[seg],
//               dgate[s] = sum_{rows of s} dout * y
//   swiglu:         out = silu(a) * b,  silu(a) = a * sigmoid(a)
//     backward: da = dout * b * sigmoid(a) * (1 + a * (1 - sigmoid(a))), db = dout * silu(a)
// Math in fp32. a, b, da, db are row views with their own row strides (the two halves of one
// [M, 2H] tensor have stride 2H). dgate uses the deterministic two-stage scheme of common.cuh.
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

__device__ __forceinline__ float sigmoid(float a) { return 1.f / (1.f + __expf(-a)); }

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
swiglu_fwd_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                  int64_t M, int64_t H, int64_t lda, int64_t ldb, int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (row >= M) return;
  for (int64_t c = (int64_t)lane * VEC; c < H; c += (int64_t)tpr * VEC) {
    float av[VEC], bv[VEC];
    load_f<VEC>(a + row * lda + c, av);
    load_f<VEC>(b + row * ldb + c, bv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) av[e] = av[e] * sigmoid(av[e]) * bv[e];
    store_f<VEC>(out + row * H + c, av);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256)
swiglu_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ a, const T* __restrict__ b,
                  T* __restrict__ da, T* __restrict__ db, int64_t M, int64_t H, int64_t lda,
                  int64_t ldb, int64_t ldda, int64_t lddb, int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (row >= M) return;
  for (int64_t c = (int64_t)lane * VEC; c < H; c += (int64_t)tpr * VEC) {
    float dv[VEC], av[VEC], bv[VEC];
    load_f<VEC>(dout + row * H + c, dv);
    load_f<VEC>(a + row * lda + c, av);
    load_f<VEC>(b + row * ldb + c, bv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float sg = sigmoid(av[e]), silu = av[e] * sg;
      const float dsilu = sg * (1.f + av[e] * (1.f - sg));
      av[e] = dv[e] * bv[e] * dsilu;
      bv[e] = dv[e] * silu;
    }
    store_f<VEC>(da + row * ldda + c, av);
    store_f<VEC>(db + row * lddb + c, bv);
  }
}

// Calls f(Int<VEC>) with VEC = VMAX (the dtype's 16-byte width) or 1.
template <int VMAX, typename F>
inline void dispatch_vec(int vec, F&& f) {
  if (vec == VMAX) f(Int<VMAX>{}); else f(Int<1>{});
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

namespace {

// Every row start of a [M, H] view with row stride ld is 16-byte aligned.
bool rows_aligned(const void* p, int64_t ld, int vec) { return aligned16(p) && ld % vec == 0; }

}  // namespace

cudaError_t sgk_swiglu_fwd(SgkDtype dt, const void* a, const void* b, void* out, int64_t M,
                           int64_t H, int64_t lda, int64_t ldb, cudaStream_t stream) {
  if (M == 0 || H == 0) return cudaSuccess;
  const int vm = vec_max_of(dt);
  const bool al = rows_aligned(a, lda, vm) && rows_aligned(b, ldb, vm) && aligned16(out);
  const RowPlan p = plan_rows(H, vm, al, /*keep_in_registers=*/false);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_vec<vmax_of<T>()>(p.vec, [&](auto v) {
      auto kernel = swiglu_fwd_kernel<T, decltype(v)::value>;
      SGK_LAUNCH(kernel, blocks_for(M, p), p.threads, stream, (const T*)a, (const T*)b, (T*)out,
                 M, H, lda, ldb, p.tpr);
    });
    return cudaGetLastError();
  });
}

cudaError_t sgk_swiglu_bwd(SgkDtype dt, const void* dout, const void* a, const void* b, void* da,
                           void* db, int64_t M, int64_t H, int64_t lda, int64_t ldb,
                           int64_t ldda, int64_t lddb, cudaStream_t stream) {
  if (M == 0 || H == 0) return cudaSuccess;
  const int vm = vec_max_of(dt);
  const bool al = aligned16(dout) && rows_aligned(a, lda, vm) && rows_aligned(b, ldb, vm) &&
                  rows_aligned(da, ldda, vm) && rows_aligned(db, lddb, vm);
  const RowPlan p = plan_rows(H, vm, al, /*keep_in_registers=*/false);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_vec<vmax_of<T>()>(p.vec, [&](auto v) {
      auto kernel = swiglu_bwd_kernel<T, decltype(v)::value>;
      SGK_LAUNCH(kernel, blocks_for(M, p), p.threads, stream, (const T*)dout, (const T*)a,
                 (const T*)b, (T*)da, (T*)db, M, H, lda, ldb, ldda, lddb, p.tpr);
    });
    return cudaGetLastError();
  });
}
