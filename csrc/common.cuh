// Shared device and host helpers of the sgkernels CUDA kernels.
//
// Row kernels: a *group* of `tpr` threads (threads per row) owns one row at a time. Thread
// `lane` of a group handles the VEC-wide column vectors lane, lane + tpr, ... (K of them when the
// row is kept in registers). tpr <= 32 packs 128 / tpr groups into a block and reduces with warp
// shuffles; tpr > 32 is a multiple of 32, one group per block, reduced through shared memory.
// VEC = 16 bytes / sizeof(T) when D % VEC == 0 and every pointer is 16-byte aligned, else 1.
//
// Deterministic weight / segment gradients (no float atomics), two stages:
//   1. group g walks the contiguous rows [g*R, (g+1)*R) and keeps fp32 column sums in registers.
//      Whole-tensor sums (dweight) go to partial row g. Per-segment sums go to partial row
//      g + s for the run of rows of segment s: seg is non-decreasing, so (g, s) pairs met in row
//      order have strictly increasing g + s and every pair owns its own row of G + S.
//   2. piece_reduce_kernel: output row s sums partial rows g + s for g in
//      [first_row(s) / R, last_row(s) / R] (segment bounds by binary search on seg, on device),
//      in a fixed order, and casts to the output dtype.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "sgk_kernels.h"

// Every launch goes through SGK_LAUNCH so that the emulation of csrc/emu/ can run the kernels on
// the CPU (it defines SGK_LAUNCH before this header). `kernel` must be a single token.
#ifndef SGK_LAUNCH
#define SGK_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif
// Alignment of every vector access: free on the GPU build; the CPU emulation defines it to flag
// the misaligned access that a GPU would fault on (and a CPU would silently accept).
#ifndef SGK_CHECK_ALIGNED
#define SGK_CHECK_ALIGNED(ptr, bytes)
#endif

namespace sgk {

// ---- element conversions and packed (vectorized) access -------------------------------------
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

template <int N, typename T>
__device__ __forceinline__ void load_f(const T* p, float (&out)[N]) {
  SGK_CHECK_ALIGNED(p, sizeof(Pack<T, N>));
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_f(pk.v[i]);
}

template <int N, typename T>
__device__ __forceinline__ void store_f(T* p, const float (&in)[N]) {
  SGK_CHECK_ALIGNED(p, sizeof(Pack<T, N>));
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_f<T>(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// fp32 store of N floats at p (p aligned to 4 * min(N, 4) bytes), 16-byte pieces when N >= 4.
template <int N>
__device__ __forceinline__ void store_f32(float* p, const float (&v)[N]) {
  constexpr int P = N < 4 ? N : 4;
  SGK_CHECK_ALIGNED(p, sizeof(Pack<float, P>));
#pragma unroll
  for (int i = 0; i < N; i += P) {
    Pack<float, P> pk;
#pragma unroll
    for (int j = 0; j < P; ++j) pk.v[j] = v[i + j];
    *reinterpret_cast<Pack<float, P>*>(p + i) = pk;
  }
}

template <int N>
__device__ __forceinline__ void fill(float (&v)[N], float value) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = value;
}

// ---- reductions -----------------------------------------------------------------------------
// Sum of v over the tpr threads of a group. Every thread of the block must call it (same number
// of times); smem holds >= 32 floats. The order of additions is fixed: deterministic.
__device__ __forceinline__ float group_sum(float v, int tpr, float* smem) {
  const int width = tpr < 32 ? tpr : 32;
  for (int offset = width >> 1; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (tpr <= 32) return v;
  __syncthreads();  // the previous call's readers are done with smem
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (tpr >> 5); ++w) total += smem[w];
  return total;
}

// First index i in [0, n) with seg[i] >= s (n if none).
__device__ __forceinline__ int64_t lower_bound(const int32_t* seg, int64_t n, int32_t s) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (seg[mid] < s) lo = mid + 1; else hi = mid;
  }
  return lo;
}

constexpr int kReduceCols = 32;
constexpr int kReduceLanes = 8;

// Stage 2 (see top). grid = (ceil(D / 32), min(n_out, 65535)), block = (32, 8).
// seg == nullptr: one output row summing partial rows [0, n_parts). Otherwise output row s sums
// the partial rows of segment s. out[s, c] = mult[c] * sum (mult may be null).
template <typename T>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes)
piece_reduce_kernel(const float* __restrict__ part, const int32_t* __restrict__ seg,
                    const T* __restrict__ mult, T* __restrict__ out, int64_t M, int64_t D,
                    int64_t rows_per_group, int64_t n_parts, int64_t n_out) {
  __shared__ float sums[kReduceLanes][kReduceCols];
  const int64_t c = (int64_t)blockIdx.x * kReduceCols + threadIdx.x;
  for (int64_t s = blockIdx.y; s < n_out; s += gridDim.y) {
    int64_t first = 0, last = n_parts - 1, base = 0;
    if (seg != nullptr) {
      const int64_t lo = lower_bound(seg, M, (int32_t)s);
      const int64_t hi = lower_bound(seg, M, (int32_t)s + 1);
      first = lo / rows_per_group;
      last = lo < hi ? (hi - 1) / rows_per_group : first - 1;
      base = s;
    }
    float acc = 0.f;
    if (c < D)
      for (int64_t g = first + threadIdx.y; g <= last; g += kReduceLanes)
        acc += part[(g + base) * D + c];
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < D) {
      float total = 0.f;
#pragma unroll
      for (int l = 0; l < kReduceLanes; ++l) total += sums[l][threadIdx.x];
      if (mult != nullptr) total *= to_f(mult[c]);
      out[s * D + c] = from_f<T>(total);
    }
    __syncthreads();  // sums is reused by the next segment
  }
}

template <typename T>
inline void launch_piece_reduce(const float* part, const int32_t* seg, const T* mult, T* out,
                                int64_t M, int64_t D, int64_t rows_per_group, int64_t n_parts,
                                int64_t n_out, cudaStream_t stream) {
  if (D == 0 || n_out == 0) return;
  const dim3 grid((unsigned)((D + kReduceCols - 1) / kReduceCols),
                  (unsigned)(n_out < 65535 ? n_out : 65535));
  const dim3 block(kReduceCols, kReduceLanes);
  auto kernel = piece_reduce_kernel<T>;
  SGK_LAUNCH(kernel, grid, block, stream, part, seg, mult, out, M, D, rows_per_group, n_parts,
             n_out);
}

// ---- host-side planning ---------------------------------------------------------------------
template <typename T> struct Tag { using type = T; };
template <int N> struct Int { static constexpr int value = N; };

template <typename F>
inline cudaError_t dispatch_dtype(SgkDtype dt, F&& f) {
  switch (dt) {
    case SGK_F32: return f(Tag<float>{});
    case SGK_F16: return f(Tag<__half>{});
    case SGK_BF16: return f(Tag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

inline int vec_max_of(SgkDtype dt) { return dt == SGK_F32 ? 4 : 8; }

inline bool aligned16(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

struct RowPlan {
  int vec;      // elements per vector access
  int k;        // vectors per thread (register-resident kernels)
  int tpr;      // threads per row
  int threads;  // threads per block
};

inline int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Plan of a row kernel over rows of D elements. keep_in_registers: K vectors per thread with
// K * VEC <= 8 (K in {1, 2} for VEC > 1, {1, 8} for VEC = 1) and tpr <= 512, which bounds D by
// SGK_MAX_ROW_DIM; otherwise tpr <= 256 threads loop over the row.
inline RowPlan plan_rows(int64_t D, int vec_max, bool aligned, bool keep_in_registers) {
  RowPlan p;
  p.vec = (aligned && D % vec_max == 0) ? vec_max : 1;
  const int64_t nvec = (D + p.vec - 1) / p.vec;
  p.k = 1;
  if (nvec <= 32) {
    p.tpr = next_pow2(nvec);
    p.threads = 128;
    return p;
  }
  const int64_t cap = keep_in_registers ? 512 : 256;
  if (keep_in_registers && nvec > cap) p.k = p.vec > 1 ? 2 : 8;
  const int64_t lanes = (nvec + p.k - 1) / p.k;
  p.tpr = (int)(lanes < cap ? (lanes + 31) / 32 * 32 : cap);
  p.threads = p.tpr;
  return p;
}

inline int groups_per_block(const RowPlan& p) { return p.threads / p.tpr; }

inline int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
    n = 1;
  return n;
}

// Row partition of the two-stage reductions: G groups of R consecutive rows (G * R >= M,
// every group non-empty). At least 16 rows per group keeps the partial sums small next to the
// inputs, and G stays below about 1024 resident threads per SM worth of groups, beyond which more
// groups add partial-sum traffic without adding parallelism. It depends only on the dtype, M, D
// and the device (the group width is that of the 16-byte-aligned plan), so the workspace size,
// queried first, and the launch always agree.
struct Partition {
  int64_t groups;
  int64_t rows_per_group;
};

inline Partition partition_rows(SgkDtype dt, int64_t M, int64_t D) {
  const int64_t min_rows = 16;
  const int tpr = plan_rows(D, vec_max_of(dt), /*aligned=*/true, /*keep_in_registers=*/true).tpr;
  int64_t g = (M + min_rows - 1) / min_rows;
  const int64_t cap = (int64_t)sm_count() * 1024 / tpr;
  if (g > cap) g = cap;
  if (g < 1) g = 1;
  Partition part;
  part.rows_per_group = (M + g - 1) / g;
  if (part.rows_per_group < 1) part.rows_per_group = 1;
  part.groups = (M + part.rows_per_group - 1) / part.rows_per_group;
  return part;
}

inline unsigned blocks_for(int64_t groups, const RowPlan& p) {
  const int64_t gpb = groups_per_block(p);
  return (unsigned)((groups + gpb - 1) / gpb);
}

// Calls f(Int<VEC>) with VEC = VMAX (the dtype's 16-byte width) or 1.
template <int VMAX, typename F>
inline void dispatch_vec(int vec, F&& f) {
  if (vec == VMAX) f(Int<VMAX>{}); else f(Int<1>{});
}

// Calls f(Int<VEC>, Int<K>) for the plan's (vec, k); VMAX is the dtype's widest vector.
template <int VMAX, typename F>
inline void dispatch_vec_k(const RowPlan& p, F&& f) {
  if (p.vec == VMAX) {
    if constexpr (VMAX * 2 <= 8) {
      if (p.k == 2) return f(Int<VMAX>{}, Int<2>{});
    }
    f(Int<VMAX>{}, Int<1>{});
  } else if (p.k == 8) {
    f(Int<1>{}, Int<8>{});
  } else {
    f(Int<1>{}, Int<1>{});
  }
}

template <typename T> constexpr int vmax_of() { return 16 / (int)sizeof(T); }

}  // namespace sgk
