// sum_shards on the CPU: the owner's side of the FP8 reduce-scatter (docs/design.md §3). Shards are summed in
// float32 in shard order, per chunk of elements held in an L1-resident buffer; a scaled output needs
// the amax of the whole sum first, so pass 2 recomputes the (cheap, deterministic) sum and stores it.
#include <algorithm>
#include <vector>

#include "common.h"
#include "mfp8/kernels.h"

namespace mfp8 {
namespace {

constexpr int64_t kChunk = 1024;

// buf[0:len] = factor * sum_s load(shard_s[lo:lo+len], sinv[s]), in the reference's order.
template <DType S>
void sum_chunk(const typename Traits<S>::T* shards, int64_t num_shards, const float* sinv, int64_t n,
               float factor, int64_t lo, int64_t len, float* __restrict buf) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) buf[i] = 0.0f;  // 0 + x, as torch: -0 becomes +0
  for (int64_t s = 0; s < num_shards; ++s) {
    const typename Traits<S>::T* __restrict src = shards + s * n + lo;
    const float si = sinv[s];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) buf[i] = buf[i] + load_scaled<S>(src[i], si);
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) buf[i] = buf[i] * factor;
}

template <DType S, DType O>
void sum_shards(const void* sv, int64_t num_shards, const float* scale_invs, void* ov, int64_t n,
                float factor, int margin, const float* prev_sinv, float* out_sinv, float* amax_out) {
  using TS = typename Traits<S>::T;
  using TO = typename Traits<O>::T;
  const TS* shards = static_cast<const TS*>(sv);
  TO* out = static_cast<TO*>(ov);
  const std::vector<float> sinv(scale_invs, scale_invs + num_shards);
  const bool parallel = n * std::max<int64_t>(num_shards, 1) >= cpu::kSerialBelow;
  const bool two_pass = Traits<O>::kScaled;
  uint32_t m = 0;

  if (two_pass) {
#pragma omp parallel if (parallel) reduction(max : m)
    {
      alignas(64) float buf[kChunk];
      const cpu::Range r = cpu::thread_range(n);
      for (int64_t lo = r.lo; lo < r.hi; lo += kChunk) {
        const int64_t len = std::min(kChunk, r.hi - lo);
        sum_chunk<S>(shards, num_shards, sinv.data(), n, factor, lo, len, buf);
        for (int64_t i = 0; i < len; ++i) m = std::max(m, abs_bits(buf[i]));
      }
    }
  }
  const float prev = prev_sinv ? recip_rn(*prev_sinv) : 1.0f;
  const float scale = two_pass ? compute_scale(u2f(m), Traits<O>::kMax, margin, prev) : 1.0f;
  uint32_t m2 = 0;
#pragma omp parallel if (parallel) reduction(max : m2)
  {
    alignas(64) float buf[kChunk];
    const cpu::Range r = cpu::thread_range(n);
    for (int64_t lo = r.lo; lo < r.hi; lo += kChunk) {
      const int64_t len = std::min(kChunk, r.hi - lo);
      sum_chunk<S>(shards, num_shards, sinv.data(), n, factor, lo, len, buf);
      TO* __restrict dst = out + lo;
      for (int64_t i = 0; i < len; ++i) {
        m2 = std::max(m2, abs_bits(buf[i]));
        dst[i] = store_scaled<O>(buf[i], scale);
      }
    }
  }
  *out_sinv = recip_rn(scale);
  *amax_out = u2f(two_pass ? m : m2);
}

}  // namespace

void sum_shards_cpu(const void* shards, DType shard_dtype, int64_t num_shards, const float* scale_invs,
                    void* out, DType out_dtype, int64_t n, float factor, int margin,
                    const float* prev_sinv, float* out_sinv, float* amax) {
  dispatch_dtype(shard_dtype, [&](auto ts) {
    dispatch_dtype(out_dtype, [&](auto to) {
      sum_shards<decltype(ts)::value, decltype(to)::value>(shards, num_shards, scale_invs, out, n, factor,
                                                           margin, prev_sinv, out_sinv, amax);
    });
  });
}

}  // namespace mfp8
