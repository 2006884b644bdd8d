// Host allocator settings. The CPU reference allocates its per-step activation buffers with
// std::vector; glibc would serve each large one with a fresh mmap and unmap it on free, so every
// step page-faults its whole working set again. Raising the mmap and trim thresholds keeps freed
// memory in the process for reuse (measured: -30% step time on the small preset, 2 cores).
#pragma once

#include <malloc.h>

namespace frugal {

inline void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);       // blocks up to 1 GiB come from the heap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);       // do not return free heap tops to the OS eagerly
  mallopt(M_TOP_PAD, 64 << 20);
}

}  // namespace frugal
