// Host launchers of the sgkernels CUDA kernels (norm.cu, residual.cu, swiglu.cu, routing.cu);
// the math of each op: sgkernels.ops.<op>.
//
// Plain C++ interface over raw device pointers, sizes and a stream, so that the kernel files
// include only CUDA headers and compile alone with nvcc; csrc/ops.cpp binds them to torch.
// All tensors are contiguous row-major except where a row stride is passed. Every launcher
// returns the launch status (cudaGetLastError after the last launch). C linkage, so that the
// CPU emulation tests (csrc/emu/, tests/kernels/test_cuda_emulated.py) can call them through
// ctypes.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

extern "C" {

enum SgkDtype : int { SGK_F32 = 0, SGK_F16 = 1, SGK_BF16 = 2 };
// Element type of a row-index tensor (route_* idx): the int32 / int64 the public ops accept.
enum SgkIndex : int { SGK_I32 = 0, SGK_I64 = 1 };

// Largest row width D (elements) of the kernels that keep a row in registers:
// norms (forward and backward) and gated_residual's backward.
constexpr int64_t SGK_MAX_ROW_DIM = 4096;

// ---- rms_norm / rms_norm_modulate (norm.cu) -------------------------------------------------
// w may be null; shift, scale, seg are null for plain rms_norm. x, y [M, D]; rstd [M] fp32.
// D in [0, SGK_MAX_ROW_DIM]; D = 0 writes rstd = NaN (the mean of no squares, as the reference).
cudaError_t sgk_rms_norm_fwd(SgkDtype dt, const void* x, const void* w, const void* shift,
                             const void* scale, const int32_t* seg, void* y, float* rstd,
                             int64_t M, int64_t D, float eps, cudaStream_t stream);

// Bytes of fp32 workspace sgk_rms_norm_bwd needs for M rows, width D, S segments (S = 0 for
// plain rms_norm) on the current device.
size_t sgk_rms_norm_bwd_workspace(SgkDtype dt, int64_t M, int64_t D, int64_t S);

// dx; dw (if w); with scale/seg (modulate): dshift, dscale [S, D]. dw, dshift, dscale are
// written in x's dtype.
cudaError_t sgk_rms_norm_bwd(SgkDtype dt, const void* dy, const void* x, const void* w,
                             const void* scale, const int32_t* seg, const float* rstd, void* dx,
                             void* dw, void* dshift, void* dscale, float* workspace, int64_t M,
                             int64_t D, int64_t S, cudaStream_t stream);

// ---- gated_residual (residual.cu) -----------------------------------------------------------
// x, y, out [M, D], gate [S, D].
cudaError_t sgk_gated_residual_fwd(SgkDtype dt, const void* x, const void* y, const void* gate,
                                   const int32_t* seg, void* out, int64_t M, int64_t D,
                                   cudaStream_t stream);

size_t sgk_gated_residual_bwd_workspace(SgkDtype dt, int64_t M, int64_t D, int64_t S);

// dy and dgate (dx is dout).
cudaError_t sgk_gated_residual_bwd(SgkDtype dt, const void* dout, const void* y,
                                   const void* gate, const int32_t* seg, void* dy, void* dgate,
                                   float* workspace, int64_t M, int64_t D, int64_t S,
                                   cudaStream_t stream);

// ---- swiglu (swiglu.cu) ---------------------------------------------------------------------
// a, b [M, H] with row strides lda, ldb (elements); out [M, H] contiguous.
cudaError_t sgk_swiglu_fwd(SgkDtype dt, const void* a, const void* b, void* out, int64_t M,
                           int64_t H, int64_t lda, int64_t ldb, cudaStream_t stream);

// da, db written through row strides ldda, lddb.
cudaError_t sgk_swiglu_bwd(SgkDtype dt, const void* dout, const void* a, const void* b, void* da,
                           void* db, int64_t M, int64_t H, int64_t lda, int64_t ldb,
                           int64_t ldda, int64_t lddb, cudaStream_t stream);

// ---- route_gather / route_scatter (routing.cu); dtype-agnostic row copies of row_bytes bytes --
// idx [K] has element type `it` (read as is, no conversion copy).
// gather: rows whose index is outside [0, T) are written as zeros.
cudaError_t sgk_route_gather(SgkIndex it, const void* x, const void* idx, void* out, int64_t T,
                             int64_t K, int64_t row_bytes, cudaStream_t stream);

// scatter: inv is an int32 [T] scratch buffer.
cudaError_t sgk_route_scatter(SgkIndex it, const void* base, const void* y, const void* idx,
                              void* out, int32_t* inv, int64_t T, int64_t K, int64_t row_bytes,
                              cudaStream_t stream);

// scatter's backward (dbase, dy): inv is an int32 [T] scratch buffer.
cudaError_t sgk_route_scatter_bwd(SgkIndex it, const void* dout, const void* idx, void* dbase,
                                  void* dy, int32_t* inv, int64_t T, int64_t K,
                                  int64_t row_bytes, cudaStream_t stream);

}  // extern "C"
