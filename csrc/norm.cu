// rms_norm and rms_norm_modulate over packed segments, forward and backward; math:
// sgkernels.ops.norm.
//
// dx is formed as rstd * g - x * rstd^3 * mean(g * x) (g: the gradient of x * rstd), the
// arrangement of the torch backend. One group of threads per row keeps the row in registers
// (K vectors per thread); statistics and sums in fp32; dw / dshift / dscale by the
// deterministic two-stage scheme of common.cuh.
#include "common.cuh"

namespace sgk {

template <typename T, int VEC, int K, bool MOD>
__global__ void __launch_bounds__(512)
rms_norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ shift, const T* __restrict__ scale,
                    const int32_t* __restrict__ seg, T* __restrict__ y, float* __restrict__ rstd,
                    int64_t M, int64_t D, int tpr, float eps) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % tpr;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  const bool valid = row < M;
  // Vector k of this lane starts at column (lane + k * tpr) * VEC; column offsets are int
  // (D <= SGK_MAX_ROW_DIM), which keeps <float, 4, 2, true> within ptxas's 32-register target.
  // The scalar path with K > 1 (unvectorized rows of over 512 elements) splits the column into
  // the lane's part, folded into the row pointers, and the block-uniform k * tpr, tested against
  // D - lane: otherwise ptxas keeps K sign-extended 64-bit offsets and K predicates live across
  // the row reduction and spills on sm_80. The vector paths compile to the same SASS as without
  // the split.
  constexpr bool kSplit = VEC == 1 && K > 1;
  const int lo = kSplit ? lane : 0;
  const int64_t lim = kSplit ? (int)D - lane : D;
  auto off = [&](int k) { return kSplit ? k * tpr : (lane + k * tpr) * VEC; };
  const T* xr = x + row * D + lo;
  float xv[K][VEC];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = off(k);
    if (valid && c < lim) load_f<VEC>(xr + c, xv[k]); else fill(xv[k], 0.f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) ss += xv[k][i] * xv[k][i];
  }
  ss = group_sum(ss, tpr, smem);
  if (!valid) return;
  const float r = rsqrtf(ss / (float)D + eps);
  if (lane == 0) rstd[row] = r;
  const int64_t srow = MOD ? (int64_t)seg[row] * D : 0;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = off(k);
    if (c >= lim) continue;
    float out[VEC], wv[VEC];
    if (w != nullptr) load_f<VEC>(w + lo + c, wv); else fill(wv, 1.f);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = xv[k][i] * r * wv[i];
    if constexpr (MOD) {
      float sh[VEC], sc[VEC];
      load_f<VEC>(shift + srow + lo + c, sh);
      load_f<VEC>(scale + srow + lo + c, sc);
#pragma unroll
      for (int i = 0; i < VEC; ++i) out[i] = out[i] * (1.f + sc[i]) + sh[i];
    }
    store_f<VEC>(y + row * D + lo + c, out);
  }
}

// Group g owns rows [g*R, (g+1)*R). part_w: [G, D]; part_p, part_q: [G + S, D] (MOD only).
template <typename T, int VEC, int K, bool MOD>
__global__ void __launch_bounds__(512)
rms_norm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ scale, const int32_t* __restrict__ seg,
                    const float* __restrict__ rstd, T* __restrict__ dx,
                    float* __restrict__ part_w, float* __restrict__ part_p,
                    float* __restrict__ part_q, int64_t M, int64_t D, int tpr, int64_t G,
                    int64_t R) {
  __shared__ float smem[32];
  const int lane = threadIdx.x % tpr;
  const int64_t g = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
  const int64_t row0 = g * R;
  float wv[K][VEC], aw[K][VEC], ap[K][VEC], aq[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (int64_t)(lane + k * tpr) * VEC;
    if (w != nullptr && c < D) load_f<VEC>(w + c, wv[k]); else fill(wv[k], 1.f);
    fill(aw[k], 0.f);
    fill(ap[k], 0.f);
    fill(aq[k], 0.f);
  }
  int32_t cur = (MOD && row0 < M) ? seg[row0] : 0;
  for (int64_t i = 0; i < R; ++i) {
    const int64_t row = row0 + i;
    const bool valid = g < G && row < M;
    const int32_t s = (MOD && valid) ? seg[row] : cur;
    if (MOD && s != cur) {  // flush the finished segment's piece (row g + cur)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t c = (int64_t)(lane + k * tpr) * VEC;
        if (c < D) {
          store_f32(part_p + (g + cur) * D + c, ap[k]);
          store_f32(part_q + (g + cur) * D + c, aq[k]);
        }
        fill(ap[k], 0.f);
        fill(aq[k], 0.f);
      }
      cur = s;
    }
    float xv[K][VEC], dyv[K][VEC], m[K][VEC];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (int64_t)(lane + k * tpr) * VEC;
      if (valid && c < D) {
        load_f<VEC>(x + row * D + c, xv[k]);
        load_f<VEC>(dy + row * D + c, dyv[k]);
        if constexpr (MOD) {
          load_f<VEC>(scale + (int64_t)s * D + c, m[k]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) m[k][e] += 1.f;
        } else {
          fill(m[k], 1.f);
        }
      } else {
        fill(xv[k], 0.f);
        fill(dyv[k], 0.f);
        fill(m[k], 0.f);
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += dyv[k][e] * m[k][e] * wv[k][e] * xv[k][e];
    }
    dot = group_sum(dot, tpr, smem);
    const float r = valid ? rstd[row] : 0.f;
    const float corr = r * r * r * dot / (float)D;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = (int64_t)(lane + k * tpr) * VEC;
      float dxv[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        dxv[e] = r * dyv[k][e] * m[k][e] * wv[k][e] - xv[k][e] * corr;
        const float dn = dyv[k][e] * xv[k][e] * r;  // dy * x * rstd
        aw[k][e] += dn * m[k][e];
        ap[k][e] += dn;
        aq[k][e] += dyv[k][e];
      }
      if (valid && c < D) store_f<VEC>(dx + row * D + c, dxv);
    }
  }
  if (g >= G) return;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = (int64_t)(lane + k * tpr) * VEC;
    if (c >= D) continue;
    if (part_w != nullptr) store_f32(part_w + g * D + c, aw[k]);
    if constexpr (MOD) {
      store_f32(part_p + (g + cur) * D + c, ap[k]);
      store_f32(part_q + (g + cur) * D + c, aq[k]);
    }
  }
}

inline RowPlan norm_plan(SgkDtype dt, int64_t D, bool aligned) {
  return plan_rows(D, vec_max_of(dt), aligned, /*keep_in_registers=*/true);
}

}  // namespace sgk

using namespace sgk;

cudaError_t sgk_rms_norm_fwd(SgkDtype dt, const void* x, const void* w, const void* shift,
                             const void* scale, const int32_t* seg, void* y, float* rstd,
                             int64_t M, int64_t D, float eps, cudaStream_t stream) {
  if (D < 0 || D > SGK_MAX_ROW_DIM) return cudaErrorInvalidValue;
  if (M == 0) return cudaSuccess;
  // Width 0: y is empty and rstd = rsqrt(mean of no squares + eps) = rsqrt(0/0 + eps) = NaN, as
  // in the reference (all-ones bytes are a NaN float).
  if (D == 0) return cudaMemsetAsync(rstd, 0xff, (size_t)M * sizeof(float), stream);
  const bool mod = seg != nullptr;
  const bool al = aligned16(x) && aligned16(w) && aligned16(shift) && aligned16(scale) &&
                  aligned16(y);
  const RowPlan p = norm_plan(dt, D, al);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const unsigned blocks = blocks_for(M, p);
    dispatch_vec_k<vmax_of<T>()>(p, [&](auto v, auto k) {
      constexpr int VEC = decltype(v)::value, K = decltype(k)::value;
      auto args = [&](auto kernel) {
        SGK_LAUNCH(kernel, blocks, p.threads, stream, (const T*)x, (const T*)w, (const T*)shift,
                   (const T*)scale, seg, (T*)y, rstd, M, D, p.tpr, eps);
      };
      if (mod) args(rms_norm_fwd_kernel<T, VEC, K, true>);
      else args(rms_norm_fwd_kernel<T, VEC, K, false>);
    });
    return cudaGetLastError();
  });
}

namespace {

struct NormBwdLayout {
  RowPlan plan;
  Partition part;
  size_t w_floats, piece_floats;  // part_w [G, D]; part_p, part_q [G + S, D] each
};

NormBwdLayout norm_bwd_layout(SgkDtype dt, int64_t M, int64_t D, int64_t S, bool aligned) {
  NormBwdLayout l;
  l.plan = norm_plan(dt, D, aligned);
  l.part = partition_rows(dt, M, D);
  l.w_floats = (size_t)l.part.groups * D;
  l.piece_floats = S > 0 ? (size_t)(l.part.groups + S) * D : 0;
  return l;
}

}  // namespace

size_t sgk_rms_norm_bwd_workspace(SgkDtype dt, int64_t M, int64_t D, int64_t S) {
  // The sizes depend on M, D, S and the device only (not on the pointers' alignment).
  const NormBwdLayout l = norm_bwd_layout(dt, M, D, S, true);
  return (l.w_floats + 2 * l.piece_floats) * sizeof(float);
}

cudaError_t sgk_rms_norm_bwd(SgkDtype dt, const void* dy, const void* x, const void* w,
                             const void* scale, const int32_t* seg, const float* rstd, void* dx,
                             void* dw, void* dshift, void* dscale, float* workspace, int64_t M,
                             int64_t D, int64_t S, cudaStream_t stream) {
  if (D < 0 || D > SGK_MAX_ROW_DIM) return cudaErrorInvalidValue;
  if (D == 0) return cudaSuccess;  // dx, dw, dshift, dscale are all empty
  const bool mod = seg != nullptr;
  const bool al = aligned16(dy) && aligned16(x) && aligned16(w) && aligned16(scale) &&
                  aligned16(dx);
  const NormBwdLayout l = norm_bwd_layout(dt, M, D, mod ? S : 0, al);
  const RowPlan& p = l.plan;
  float* part_w = w != nullptr ? workspace : nullptr;
  float* part_p = workspace + l.w_floats;
  float* part_q = part_p + l.piece_floats;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (M > 0) {
      const unsigned blocks = blocks_for(l.part.groups, p);
      dispatch_vec_k<vmax_of<T>()>(p, [&](auto v, auto k) {
        constexpr int VEC = decltype(v)::value, K = decltype(k)::value;
        auto args = [&](auto kernel) {
          SGK_LAUNCH(kernel, blocks, p.threads, stream, (const T*)dy, (const T*)x, (const T*)w,
                     (const T*)scale, seg, rstd, (T*)dx, part_w, part_p, part_q, M, D, p.tpr,
                     l.part.groups, l.part.rows_per_group);
        };
        if (mod) args(rms_norm_bwd_kernel<T, VEC, K, true>);
        else args(rms_norm_bwd_kernel<T, VEC, K, false>);
      });
    }
    const int64_t G = M > 0 ? l.part.groups : 0, R = l.part.rows_per_group;
    if (w != nullptr)
      launch_piece_reduce<T>(part_w, nullptr, nullptr, (T*)dw, M, D, R, G, 1, stream);
    if (mod) {
      launch_piece_reduce<T>(part_q, seg, nullptr, (T*)dshift, M, D, R, 0, S, stream);
      launch_piece_reduce<T>(part_p, seg, (const T*)w, (T*)dscale, M, D, R, 0, S, stream);
    }
    return cudaGetLastError();
  });
}
