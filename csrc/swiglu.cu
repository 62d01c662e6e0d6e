// swiglu, forward and backward; math: sgkernels.ops.swiglu.
//
// Math in fp32 (sigmoid with __expf). One group of tpr threads per row, VEC elements per access.
// a, b, da, db are row views with their own row strides (the two halves of one [M, 2H] tensor
// have stride 2H); 16-byte vectors only when every row start of every view is aligned.
#include "common.cuh"

namespace sgk {

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

}  // namespace sgk

using namespace sgk;

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
