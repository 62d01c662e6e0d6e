"""Host memory of a CPU process: keep freed memory for reuse instead of returning it to the OS.

glibc's malloc serves a large allocation with mmap (above a threshold that adapts between 128
KiB and 32 MiB) and hands freed memory at the top of its heap back to the OS (above a trim
threshold). Either way the next allocation of that size gets fresh pages from the kernel, and
the first touch of every 4 KiB page is a page fault and a zero fill. A forward pass allocates
and frees its large activations on every call, so on CPU the cost grows with the activation
size: a packed guided step of FMNIST-S/2 at batch 8 (2 × 8 images in one forward, activations
of 2-13 MiB) took 7k-20k minor page faults, two separate forwards of 8 images none, and the
packed forward was slower than the separate ones (benchmarks/README.md, bench_e2e).

    keep_freed_memory():  mallopt(M_MMAP_THRESHOLD, 32 MiB)   heap, not mmap, up to 32 MiB
                          mallopt(M_TRIM_THRESHOLD, 1 GiB)    keep up to 1 GiB of freed heap

Process-wide and permanent (like the caching allocator PyTorch uses on CUDA): the process keeps
its peak heap instead of shrinking after a forward. No effect outside glibc (macOS, musl), nor
with SGKERNELS_KEEP_FREED_MEMORY=0 in the environment (a process that must return memory).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3         # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20                           # the largest value glibc accepts (64-bit)
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory (module docstring), once per process.

    Returns:
        True when the settings were applied (glibc), False elsewhere or when
        SGKERNELS_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get("SGKERNELS_KEEP_FREED_MEMORY") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
