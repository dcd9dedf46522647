// Multi-tensor AdamW on the CPU. Per parameter: pass 1 computes the new master/exp_avg/exp_avg_sq and
// their amaxes without writing (a fresh scale needs the amax of the whole tensor), pass 2 recomputes
// them from the untouched inputs and stores them with the fresh scales. Parameters whose outputs are all
// plain (FP32/BF16) skip pass 1. Elements go through L1-resident float32 chunks: decode each input
// (one loop per storage dtype), run adamw_update (the one copy of the math, numerics.h), encode each
// output; this avoids compiling the update for every dtype combination.
#include <algorithm>
#include <vector>

#include "common.h"
#include "mfp8/kernels.h"

namespace mfp8 {
namespace {

constexpr int64_t kChunk = 512;

struct alignas(64) Amax3 {  // one cache line per thread: no false sharing between the partial amaxes
  uint32_t m = 0, v = 0, p = 0;
};

// Scalars of one parameter, read before the parallel region so pass 2 sees the old scale_invs.
struct Scalars {
  float g_sinv = 1.0f, m_sinv = 1.0f, v_sinv = 1.0f, p_sinv = 1.0f;
  float m_scale = 1.0f, v_scale = 1.0f, p_scale = 1.0f, w_scale = 1.0f;
  bool two_pass = false;
};

float read_sinv(DType d, const float* p) { return is_scaled(d) ? *p : 1.0f; }

void decode(DType d, const void* src, int64_t lo, int64_t len, float sinv, float* __restrict dst) {
  dispatch_dtype(d, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    const typename Traits<D>::T* __restrict s = static_cast<const typename Traits<D>::T*>(src) + lo;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = load_scaled<D>(s[i], sinv);
  });
}

void encode(DType d, void* dst, int64_t lo, int64_t len, const float* __restrict src, float scale) {
  dispatch_dtype(d, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    typename Traits<D>::T* __restrict o = static_cast<typename Traits<D>::T*>(dst) + lo;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) o[i] = store_scaled<D>(src[i], scale);
  });
}

// The master's store: encode, or with stochastic rounding (bits from the element's index) where asked.
void encode_master(const AdamWParam& t, int64_t lo, int64_t len, const float* __restrict src, float scale) {
  if (!t.master_sr) return encode(t.master_dtype, t.master, lo, len, src, scale);
  const uint32_t seed = t.master_sr_seed;
  if (t.master_dtype == DType::F16) {
    uint16_t* __restrict o = static_cast<uint16_t*>(t.master) + lo;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i)
      o[i] = f32_to_f16_sr(src[i] * scale, sr_bits(seed, static_cast<uint32_t>(lo + i)));
  } else {  // BF16 (the binding admits no other dtype)
    uint16_t* __restrict o = static_cast<uint16_t*>(t.master) + lo;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) o[i] = f32_to_bf16_sr(src[i], sr_bits(seed, static_cast<uint32_t>(lo + i)));
  }
}

// Thread-private float32 chunks of the four inputs; pass 2 overwrites m, v, p with the new values.
struct Buffers {
  alignas(64) float g[kChunk];
  alignas(64) float m[kChunk];
  alignas(64) float v[kChunk];
  alignas(64) float p[kChunk];
};

void load_chunk(const AdamWParam& t, const Scalars& s, int64_t lo, int64_t len, Buffers& b) {
  decode(t.grad_dtype, t.grad, lo, len, s.g_sinv, b.g);
  decode(t.exp_avg_dtype, t.exp_avg, lo, len, s.m_sinv, b.m);
  decode(t.exp_avg_sq_dtype, t.exp_avg_sq, lo, len, s.v_sinv, b.v);
  decode(t.master_dtype, t.master, lo, len, s.p_sinv, b.p);
}

// Pass 1: the amaxes of the new m, v, p over this thread's range; nothing is written.
Amax3 pass1(const AdamWParam& t, const Scalars& s, const AdamWConsts& c, cpu::Range r, Buffers& b) {
  uint32_t am = 0, av = 0, ap = 0;
  for (int64_t lo = r.lo; lo < r.hi; lo += kChunk) {
    const int64_t len = std::min(kChunk, r.hi - lo);
    load_chunk(t, s, lo, len, b);
    for (int64_t i = 0; i < len; ++i) {
      const AdamWOut o = adamw_update(b.g[i], b.m[i], b.v[i], b.p[i], c);
      am = std::max(am, abs_bits(o.m));
      av = std::max(av, abs_bits(o.v));
      ap = std::max(ap, abs_bits(o.p));
    }
  }
  Amax3 a;
  a.m = am, a.v = av, a.p = ap;
  return a;
}

// Pass 2: the same values again, stored with the fresh scales.
void pass2(const AdamWParam& t, const Scalars& s, const AdamWConsts& c, cpu::Range r, Buffers& b) {
  for (int64_t lo = r.lo; lo < r.hi; lo += kChunk) {
    const int64_t len = std::min(kChunk, r.hi - lo);
    load_chunk(t, s, lo, len, b);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const AdamWOut o = adamw_update(b.g[i], b.m[i], b.v[i], b.p[i], c);
      b.m[i] = o.m;
      b.v[i] = o.v;
      b.p[i] = o.p;
    }
    encode(t.exp_avg_dtype, t.exp_avg, lo, len, b.m, s.m_scale);
    encode(t.exp_avg_sq_dtype, t.exp_avg_sq, lo, len, b.v, s.v_scale);
    encode_master(t, lo, len, b.p, s.p_scale);
    if (t.weight) encode(t.weight_dtype, t.weight, lo, len, b.p, s.w_scale);
  }
}

// Between the passes (one thread): fresh scales from the amaxes, new scale_invs written back.
void refresh_scales(const AdamWParam& t, Scalars& s, const Amax3& a, int margin) {
  const float am = u2f(a.m), av = u2f(a.v), ap = u2f(a.p);
  if (is_scaled(t.exp_avg_dtype)) {
    s.m_scale = compute_scale(am, dtype_max(t.exp_avg_dtype), margin, recip_rn(s.m_sinv));
    *t.exp_avg_sinv = recip_rn(s.m_scale);
  }
  if (is_scaled(t.exp_avg_sq_dtype)) {
    s.v_scale = compute_scale(av, dtype_max(t.exp_avg_sq_dtype), margin, recip_rn(s.v_sinv));
    *t.exp_avg_sq_sinv = recip_rn(s.v_scale);
  }
  if (is_scaled(t.master_dtype)) {
    s.p_scale = compute_scale(ap, dtype_max(t.master_dtype), margin, recip_rn(s.p_sinv));
    *t.master_sinv = recip_rn(s.p_scale);
  }
  if (t.weight && is_scaled(t.weight_dtype)) {
    s.w_scale = compute_scale(ap, dtype_max(t.weight_dtype), margin, recip_rn(*t.weight_sinv));
    *t.weight_sinv = recip_rn(s.w_scale);
  }
}

}  // namespace

void adamw_step_cpu(const AdamWParam* params, int64_t count, const AdamWConsts& consts, int margin) {
  std::vector<Scalars> scalars(count);
  int64_t total = 0;
  for (int64_t k = 0; k < count; ++k) {
    const AdamWParam& t = params[k];
    Scalars& s = scalars[k];
    s.g_sinv = read_sinv(t.grad_dtype, t.grad_sinv);
    s.m_sinv = read_sinv(t.exp_avg_dtype, t.exp_avg_sinv);
    s.v_sinv = read_sinv(t.exp_avg_sq_dtype, t.exp_avg_sq_sinv);
    s.p_sinv = read_sinv(t.master_dtype, t.master_sinv);
    s.two_pass = is_scaled(t.exp_avg_dtype) || is_scaled(t.exp_avg_sq_dtype) ||
                 is_scaled(t.master_dtype) || (t.weight && is_scaled(t.weight_dtype));
    total += t.n;
  }
  const int nthreads = total >= cpu::kSerialBelow ? omp_get_max_threads() : 1;
  std::vector<Amax3> partial(nthreads);
#pragma omp parallel num_threads(nthreads)
  {
    Buffers bufs;
    const int tid = omp_get_thread_num();
    for (int64_t k = 0; k < count; ++k) {
      const AdamWParam& t = params[k];
      Scalars& s = scalars[k];
      const cpu::Range r = cpu::thread_range(t.n);
      if (s.two_pass) {
        partial[tid] = pass1(t, s, consts, r, bufs);
#pragma omp barrier
#pragma omp single
        {
          Amax3 a;
          for (const Amax3& p : partial) {
            a.m = std::max(a.m, p.m);
            a.v = std::max(a.v, p.v);
            a.p = std::max(a.p, p.p);
          }
          refresh_scales(t, s, a, margin);
        }  // implicit barrier: every thread sees the fresh scales, nobody overwrites `partial` early
      }
      pass2(t, s, consts, r, bufs);
    }
  }
}

}  // namespace mfp8
