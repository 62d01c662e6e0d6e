// CPU emulation of the CUDA execution model, to test the kernels of csrc/ on machines without a
// GPU (tests/kernels/test_cuda_emulated.py). Force-included when compiling csrc/*.cu as plain
// C++ (g++ -x c++ -include csrc/emu/cuda_emulation.h); never part of sgkernels._C.
//
// Blocks run one after another. The threads of a block are cooperative fibers (ucontext) run
// round-robin by a scheduler; __syncthreads waits for every live thread of the block and
// __shfl_xor_sync for every live lane of the warp, each exchanging through a per-block slot
// array. A barrier that can never complete (threads waiting at different barriers, e.g. a
// shuffle under divergent control flow) aborts with a message instead of hanging. A misaligned
// vector access (SGK_CHECK_ALIGNED), which a GPU faults on and a CPU accepts, makes the launcher
// return cudaErrorMisalignedAddress. Shared memory (`__shared__` locals) is a static per kernel
// instantiation, which is per block since blocks do not overlap.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <vector>

#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

// Sticky error of the emulated device, returned (and cleared) by cudaGetLastError (runtime.cpp).
extern "C" int sgk_emu_error;

namespace sgk_emu {

// A vector access the GPU would fault on: remember it as cudaErrorMisalignedAddress.
inline void check_aligned(const void* ptr, size_t bytes, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(ptr) % bytes == 0 || sgk_emu_error != 0) return;
  std::fprintf(stderr, "cuda_emulation: %zu-byte access at %p is misaligned (%s:%d)\n", bytes,
               ptr, file, line);
  sgk_emu_error = cudaErrorMisalignedAddress;
}

enum State { kRunnable, kAtWarpBarrier, kAtBlockBarrier, kDone };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear;
  State state;
};

struct Machine {
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<uint64_t> slots;  // one 8-byte exchange slot per thread
  ucontext_t scheduler;
  Fiber* current = nullptr;
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  std::function<void()> body;
};

inline Machine& machine() {
  static Machine m;
  return m;
}

constexpr size_t kStackBytes = 64 * 1024;

inline void wait_at(State barrier) {
  Machine& m = machine();
  Fiber* f = m.current;
  f->state = barrier;
  swapcontext(&f->ctx, &m.scheduler);
}

inline void fiber_entry() {
  Machine& m = machine();
  m.body();
  m.current->state = kDone;  // uc_link returns to the scheduler
}

// Releases the threads of `scope` waiting at `barrier` once every live thread of the scope is.
inline bool release(size_t begin, size_t end, State barrier) {
  Machine& m = machine();
  size_t live = 0, waiting = 0;
  for (size_t i = begin; i < end; ++i) {
    live += m.fibers[i].state != kDone;
    waiting += m.fibers[i].state == barrier;
  }
  if (waiting == 0 || waiting != live) return false;
  for (size_t i = begin; i < end; ++i)
    if (m.fibers[i].state == barrier) m.fibers[i].state = kRunnable;
  return true;
}

inline void run_block(uint3 block_idx) {
  Machine& m = machine();
  const size_t n = (size_t)m.block_dim.x * m.block_dim.y * m.block_dim.z;
  m.block_idx = block_idx;
  m.fibers.assign(n, Fiber{});
  if (m.stacks.size() < n * kStackBytes) m.stacks.resize(n * kStackBytes);
  m.slots.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = m.fibers[i];
    f.linear = (int)i;
    f.tid = make_uint3((unsigned)(i % m.block_dim.x),
                       (unsigned)(i / m.block_dim.x % m.block_dim.y),
                       (unsigned)(i / ((size_t)m.block_dim.x * m.block_dim.y)));
    f.state = kRunnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = m.stacks.data() + i * kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &m.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  for (;;) {
    bool progressed = false, all_done = true;
    for (size_t i = 0; i < n; ++i) {
      if (m.fibers[i].state == kRunnable) {
        m.current = &m.fibers[i];
        swapcontext(&m.scheduler, &m.fibers[i].ctx);
        progressed = true;
      }
      all_done = all_done && m.fibers[i].state == kDone;
    }
    if (all_done) return;
    for (size_t w = 0; w < n; w += 32) progressed |= release(w, w + 32 < n ? w + 32 : n,
                                                             kAtWarpBarrier);
    progressed |= release(0, n, kAtBlockBarrier);
    if (!progressed) {
      std::fprintf(stderr, "cuda_emulation: deadlock in block (%u, %u, %u): threads wait at "
                           "barriers that can never complete\n",
                   block_idx.x, block_idx.y, block_idx.z);
      std::abort();
    }
  }
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  Machine& m = machine();
  std::tuple<Params...> params(static_cast<Params>(args)...);
  m.body = [&] { std::apply(kernel, params); };
  m.grid_dim = grid;
  m.block_dim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(make_uint3(x, y, z));
}

template <typename V>
V shfl_xor(V value, int lane_mask) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  Machine& m = machine();
  const int me = m.current->linear;
  const int partner = (me & ~31) | ((me & 31) ^ lane_mask);
  std::memcpy(&m.slots[me], &value, sizeof(V));
  wait_at(kAtWarpBarrier);  // every lane has published its value
  V out;
  std::memcpy(&out, &m.slots[partner], sizeof(V));
  wait_at(kAtWarpBarrier);  // every lane has read before the slots are reused
  return out;
}

}  // namespace sgk_emu

#define threadIdx (::sgk_emu::machine().current->tid)
#define blockIdx (::sgk_emu::machine().block_idx)
#define blockDim (::sgk_emu::machine().block_dim)
#define gridDim (::sgk_emu::machine().grid_dim)

inline void __syncthreads() { ::sgk_emu::wait_at(::sgk_emu::kAtBlockBarrier); }

template <typename V>
inline V __shfl_xor_sync(unsigned, V value, int lane_mask) {
  return ::sgk_emu::shfl_xor(value, lane_mask);
}

inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }

#define SGK_CHECK_ALIGNED(ptr, bytes) \
  ::sgk_emu::check_aligned((ptr), (bytes), __FILE__, __LINE__)

#define SGK_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), ::sgk_emu::launch(kernel, dim3(grid), dim3(block), __VA_ARGS__))
