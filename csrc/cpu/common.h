// Helpers shared by the CPU kernels: dtype dispatch and the static work split over OpenMP threads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "mfp8/numerics.h"

namespace mfp8 {
namespace cpu {

// Vectorisation: the element loops are plain countable loops over __restrict pointers with branch-free
// bodies, which gcc -O3 vectorises, amax reductions included. `#pragma omp simd reduction(max:...)` is
// deliberately not used for the amax: gcc 12 keeps its per-lane accumulators in a stack array, which
// measured ~40% slower on the casts than letting the auto-vectoriser keep them in registers.

// Below this many elements a kernel runs on one thread: the team start-up costs more than it saves.
constexpr int64_t kSerialBelow = 1 << 15;

// Elements per unit of the static split: 64 elements of the narrowest (1-byte) dtype fill a cache line,
// so two threads never write the same line (no false sharing on the outputs).
constexpr int64_t kSplitAlign = 64;

struct Range {
  int64_t lo, hi;
};

// This thread's contiguous share of [0, n) inside a parallel region (static schedule, whole units).
inline Range thread_range(int64_t n) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  const int64_t units = (n + kSplitAlign - 1) / kSplitAlign;
  const int64_t per = units / nt, rem = units % nt;
  const int64_t u0 = t * per + std::min(t, rem), u1 = u0 + per + (t < rem ? 1 : 0);
  return {std::min(u0 * kSplitAlign, n), std::min(u1 * kSplitAlign, n)};
}

}  // namespace cpu
}  // namespace mfp8
