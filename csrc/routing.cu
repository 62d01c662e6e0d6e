// route_gather and route_scatter (TREAD token routing), forward and scatter's backward; math:
// sgkernels.ops.routing.
//
// idx is int32 or int64. Scatter and its backward run over the output rows with the inverse
// map inv (inv[idx[k]] = k, else -1). Row copies are dtype-agnostic: a row is row_bytes bytes
// moved in the widest unit U (16, 8, 4, 2 or 1 bytes) that divides row_bytes and every pointer.
// Scatter reads each source row once (base rows that y overwrites are never read) and writes
// each output row once.
#include "common.cuh"

namespace sgk {

template <typename U>
__device__ __forceinline__ void copy_row(U* __restrict__ dst, const U* __restrict__ src,
                                         int64_t n, int lane, int tpr) {
  SGK_CHECK_ALIGNED(dst, sizeof(U));
  SGK_CHECK_ALIGNED(src, sizeof(U));
  for (int64_t c = lane; c < n; c += tpr) dst[c] = src[c];
}

template <typename U>
__device__ __forceinline__ void zero_row(U* __restrict__ dst, int64_t n, int lane, int tpr) {
  SGK_CHECK_ALIGNED(dst, sizeof(U));
  const U z{};
  for (int64_t c = lane; c < n; c += tpr) dst[c] = z;
}

// One group of tpr threads per row; n units of U per row; I is idx's element type.
template <typename U, typename I>
__global__ void __launch_bounds__(256)
route_gather_kernel(const U* __restrict__ x, const I* __restrict__ idx,
                    U* __restrict__ out, int64_t T, int64_t K, int64_t n, int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t k = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (k >= K) return;
  const int64_t src = idx[k];
  if (src >= 0 && src < T) copy_row(out + k * n, x + src * n, n, lane, tpr);
  else zero_row(out + k * n, n, lane, tpr);
}

template <typename I>
__global__ void route_inverse_kernel(const I* __restrict__ idx, int32_t* __restrict__ inv,
                                     int64_t T, int64_t K) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int64_t t = idx[k];
  if (t >= 0 && t < T) inv[t] = (int32_t)k;
}

template <typename U>
__global__ void __launch_bounds__(256)
route_scatter_kernel(const U* __restrict__ base, const U* __restrict__ y,
                     const int32_t* __restrict__ inv, U* __restrict__ out, int64_t T, int64_t n,
                     int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t t = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (t >= T) return;
  const int32_t k = inv[t];
  copy_row(out + t * n, k >= 0 ? y + (int64_t)k * n : base + t * n, n, lane, tpr);
}

template <typename U>
__global__ void __launch_bounds__(256)
route_scatter_bwd_kernel(const U* __restrict__ dout, const int32_t* __restrict__ inv,
                         U* __restrict__ dbase, U* __restrict__ dy, int64_t T, int64_t n,
                         int tpr) {
  const int lane = threadIdx.x % tpr;
  const int64_t t = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  if (t >= T) return;
  const int32_t k = inv[t];
  if (k >= 0) {
    copy_row(dy + (int64_t)k * n, dout + t * n, n, lane, tpr);
    zero_row(dbase + t * n, n, lane, tpr);
  } else {
    copy_row(dbase + t * n, dout + t * n, n, lane, tpr);
  }
}

// Widest unit (bytes) dividing row_bytes and the address of every pointer.
inline int copy_unit(int64_t row_bytes, const void* const* ptrs, int n_ptrs) {
  for (int unit = 16; unit > 1; unit >>= 1) {
    bool ok = row_bytes % unit == 0;
    for (int i = 0; i < n_ptrs && ok; ++i)
      ok = ptrs[i] == nullptr || reinterpret_cast<uintptr_t>(ptrs[i]) % unit == 0;
    if (ok) return unit;
  }
  return 1;
}

// Calls f(Tag<I>{}) with idx's element type; cudaErrorInvalidValue for an unknown index type.
template <typename F>
inline cudaError_t dispatch_index(SgkIndex it, F&& f) {
  switch (it) {
    case SGK_I32: return f(Tag<int32_t>{});
    case SGK_I64: return f(Tag<int64_t>{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(U{}) with the unsigned type of `unit` bytes.
template <typename F>
inline void dispatch_unit(int unit, F&& f) {
  switch (unit) {
    case 16: f(uint4{}); break;
    case 8: f(uint2{}); break;
    case 4: f(uint32_t{}); break;
    case 2: f(uint16_t{}); break;
    default: f(uint8_t{}); break;
  }
}

inline cudaError_t build_inverse(SgkIndex it, const void* idx, int32_t* inv, int64_t T,
                                 int64_t K, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(inv, 0xff, (size_t)T * sizeof(int32_t), stream);  // -1
  if (err != cudaSuccess || K == 0) return err;
  return dispatch_index(it, [&](auto tag) {
    using I = typename decltype(tag)::type;
    auto kernel = route_inverse_kernel<I>;
    SGK_LAUNCH(kernel, (unsigned)((K + 255) / 256), 256, stream, (const I*)idx, inv, T, K);
    return cudaGetLastError();
  });
}

}  // namespace sgk

using namespace sgk;

cudaError_t sgk_route_gather(SgkIndex it, const void* x, const void* idx, void* out, int64_t T,
                             int64_t K, int64_t row_bytes, cudaStream_t stream) {
  if (K == 0 || row_bytes == 0) return cudaSuccess;
  const void* ptrs[2] = {x, out};
  return dispatch_index(it, [&](auto tag) {
    using I = typename decltype(tag)::type;
    dispatch_unit(copy_unit(row_bytes, ptrs, 2), [&](auto u) {
      using U = decltype(u);
      const int64_t n = row_bytes / (int64_t)sizeof(U);
      const RowPlan p = plan_rows(n, 1, false, /*keep_in_registers=*/false);
      auto kernel = route_gather_kernel<U, I>;
      SGK_LAUNCH(kernel, blocks_for(K, p), p.threads, stream, (const U*)x, (const I*)idx,
                 (U*)out, T, K, n, p.tpr);
    });
    return cudaGetLastError();
  });
}

cudaError_t sgk_route_scatter(SgkIndex it, const void* base, const void* y, const void* idx,
                              void* out, int32_t* inv, int64_t T, int64_t K, int64_t row_bytes,
                              cudaStream_t stream) {
  if (T == 0 || row_bytes == 0) return cudaSuccess;
  cudaError_t err = build_inverse(it, idx, inv, T, K, stream);
  if (err != cudaSuccess) return err;
  const void* ptrs[3] = {base, y, out};
  dispatch_unit(copy_unit(row_bytes, ptrs, 3), [&](auto u) {
    using U = decltype(u);
    const int64_t n = row_bytes / (int64_t)sizeof(U);
    const RowPlan p = plan_rows(n, 1, false, /*keep_in_registers=*/false);
    auto kernel = route_scatter_kernel<U>;
    SGK_LAUNCH(kernel, blocks_for(T, p), p.threads, stream, (const U*)base, (const U*)y, inv, (U*)out, T, n, p.tpr);
  });
  return cudaGetLastError();
}

cudaError_t sgk_route_scatter_bwd(SgkIndex it, const void* dout, const void* idx, void* dbase,
                                  void* dy, int32_t* inv, int64_t T, int64_t K,
                                  int64_t row_bytes, cudaStream_t stream) {
  if (T == 0 || row_bytes == 0) return cudaSuccess;
  cudaError_t err = build_inverse(it, idx, inv, T, K, stream);
  if (err != cudaSuccess) return err;
  const void* ptrs[3] = {dout, dbase, dy};
  dispatch_unit(copy_unit(row_bytes, ptrs, 3), [&](auto u) {
    using U = decltype(u);
    const int64_t n = row_bytes / (int64_t)sizeof(U);
    const RowPlan p = plan_rows(n, 1, false, /*keep_in_registers=*/false);
    auto kernel = route_scatter_bwd_kernel<U>;
    SGK_LAUNCH(kernel, blocks_for(T, p), p.threads, stream, (const U*)dout, inv, (U*)dbase, (U*)dy, T, n, p.tpr);
  });
  return cudaGetLastError();
}
