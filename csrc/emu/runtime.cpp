// The CUDA runtime calls of the csrc/ launchers, emulated on the host for the CPU tests
// (see cuda_emulation.h): device memory is host memory, streams are ignored, and the
// multiprocessor count that sizes the reduction partition is settable.
#include <cstring>

#include <cuda_runtime.h>

namespace {
int g_sm_count = 4;
}

extern "C" {

int sgk_emu_error = 0;  // see cuda_emulation.h

void sgk_emu_set_sm_count(int n) { g_sm_count = n; }

cudaError_t cudaGetLastError(void) {
  const int err = sgk_emu_error;
  sgk_emu_error = 0;
  return static_cast<cudaError_t>(err);
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? g_sm_count : 0;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

}  // extern "C"
