// fp8_accumulate on the CPU: acc += grad in float32, requantized with the scale of the sum's amax.
// Scaled accumulators need two passes (the amax of the whole sum decides the scale before any write);
// the sum is recomputed in pass 2 rather than stored, which moves fewer bytes than a float32 temporary.
#include <algorithm>

#include "common.h"
#include "mfp8/kernels.h"

namespace mfp8 {
namespace {

template <DType A, DType G>
void accumulate(void* accv, float* acc_sinv, const void* gv, int64_t n, int margin, float* amax_out) {
  using TA = typename Traits<A>::T;
  using TG = typename Traits<G>::T;
  TA* __restrict acc = static_cast<TA*>(accv);
  const TG* __restrict grad = static_cast<const TG*>(gv);
  const float sinv = *acc_sinv;
  const bool parallel = n >= cpu::kSerialBelow;
  uint32_t m = 0;

  if (Traits<A>::kScaled) {
#pragma omp parallel if (parallel) reduction(max : m)
    {
      const cpu::Range r = cpu::thread_range(n);
      for (int64_t i = r.lo; i < r.hi; ++i)
        m = std::max(m, abs_bits(load_scaled<A>(acc[i], sinv) + Traits<G>::decode(grad[i])));
    }
    const float scale = compute_scale(u2f(m), Traits<A>::kMax, margin, recip_rn(sinv));
#pragma omp parallel if (parallel)
    {
      const cpu::Range r = cpu::thread_range(n);
#pragma omp simd
      for (int64_t i = r.lo; i < r.hi; ++i)
        acc[i] = store_scaled<A>(load_scaled<A>(acc[i], sinv) + Traits<G>::decode(grad[i]), scale);
    }
    *acc_sinv = recip_rn(scale);
  } else {
    // Plain storage ignores the scale, so one pass writes the sum and takes its amax.
#pragma omp parallel if (parallel) reduction(max : m)
    {
      const cpu::Range r = cpu::thread_range(n);
      for (int64_t i = r.lo; i < r.hi; ++i) {
        const float total = load_scaled<A>(acc[i], sinv) + Traits<G>::decode(grad[i]);
        m = std::max(m, abs_bits(total));
        acc[i] = Traits<A>::encode(total);
      }
    }
    // The reference still refreshes scale_inv from the amax (dtype max of the plain format).
    *acc_sinv = recip_rn(compute_scale(u2f(m), Traits<A>::kMax, margin, recip_rn(sinv)));
  }
  *amax_out = u2f(m);
}

}  // namespace

void fp8_accumulate_cpu(void* acc, DType acc_dtype, float* acc_sinv, const void* grad, DType grad_dtype,
                        int64_t n, int margin, float* amax) {
  dispatch_dtype(acc_dtype, [&](auto ta) {
    dispatch_dtype(grad_dtype, [&](auto tg) {
      accumulate<decltype(ta)::value, decltype(tg)::value>(acc, acc_sinv, grad, n, margin, amax);
    });
  });
}

}  // namespace mfp8
