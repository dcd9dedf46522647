// Element-wise FP8 numerics shared by the CPU (OpenMP) and CUDA kernels.
//
// Everything here mirrors megatron_fp8/fp8/reference.py bit for bit: conversions are hand-written
// integer/float tricks (round-to-nearest-even, exact decoding), the scale rule is scaling.compute_scale,
// and the AdamW update spells out the reference's float32 operation order. The code is branch-free
// selects so gcc vectorises the CPU loops; it must be compiled without FMA contraction
// (-ffp-contract=off / --fmad=false), otherwise a*b+c fuses and the bits differ from torch.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define MFP8_HD __host__ __device__ inline
#else
#define MFP8_HD inline
#endif

namespace mfp8 {

// Storage dtypes a kernel reads or writes (the values match the binding's mapping from torch).
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, E4M3 = 3, E5M2 = 4 };

// ---------------------------------------------------------------------------------------------------
// Bit casts.
MFP8_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

MFP8_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// |x| as its bit pattern: non-negative floats order like their bits and every NaN exceeds +inf, so an
// integer max over these is a NaN-propagating float amax that vectorises (and suits atomicMax).
MFP8_HD uint32_t abs_bits(float x) { return f2u(x) & 0x7FFFFFFFu; }
MFP8_HD uint32_t max_bits(uint32_t a, uint32_t b) { return a > b ? a : b; }

// NaN-propagating max of two non-negative floats (amax of partial results).
MFP8_HD float nan_max(float a, float b) { return u2f(max_bits(abs_bits(a), abs_bits(b))); }

// IEEE-correct division and square root even if someone builds CUDA with --use_fast_math.
MFP8_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

MFP8_HD float recip_rn(float a) { return div_rn(1.0f, a); }  // scale <-> scale_inv

MFP8_HD float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// Branch-free select, written with masks: with a plain ?: gcc may move the float operation feeding one
// operand under a branch, and then it cannot if-convert it back (float ops may trap), so the loop does
// not vectorise.
MFP8_HD uint32_t select_bits(bool c, uint32_t a, uint32_t b) {
  return b ^ ((a ^ b) & (0u - static_cast<uint32_t>(c)));
}

// ---------------------------------------------------------------------------------------------------
// float32 -> narrow formats, round-to-nearest-even, saturating: |x| > fmax gives fmax with x's sign
// (exactly torch's x.clamp(-fmax, fmax) before the cast), NaN gives the format's NaN with x's sign.
// On the absolute bits `a`: the saturation is an integer min (NaN is caught separately); normal results
// round the mantissa with "add half-ulp minus one plus the kept lsb", rebiasing the exponent in the same
// addition; subnormal results come from a float addition of a power of two whose ulp is the target's
// subnormal step, so the FPU does the RNE rounding.

// E4M3 (fn): bias 7, 3 mantissa bits, max 448, min normal 2^-6, subnormal step 2^-9, NaN 0x7F, no inf.
MFP8_HD uint8_t f32_to_e4m3(float x) {
  const uint32_t u = f2u(x), sign = (u >> 24) & 0x80u, a0 = u & 0x7FFFFFFFu;
  const uint32_t a = a0 < 0x43E00000u ? a0 : 0x43E00000u;
  const uint32_t normal = (a + ((a >> 20) & 1u) + (0x7FFFFu - (120u << 23))) >> 20;
  const uint32_t sub = f2u(u2f(a) + 16384.0f) - 0x46800000u;  // + 2^14: ulp 2^-9
  uint32_t r = select_bits(a < 0x3C800000u, sub, normal);      // below 2^-6
  r = select_bits(a0 > 0x7F800000u, 0x7Fu, r);
  return static_cast<uint8_t>(r | sign);
}

// E5M2: bias 15, 2 mantissa bits, max 57344, min normal 2^-14, subnormal step 2^-16, NaN 0x7F.
MFP8_HD uint8_t f32_to_e5m2(float x) {
  const uint32_t u = f2u(x), sign = (u >> 24) & 0x80u, a0 = u & 0x7FFFFFFFu;
  const uint32_t a = a0 < 0x47600000u ? a0 : 0x47600000u;
  const uint32_t normal = (a + ((a >> 21) & 1u) + (0xFFFFFu - (112u << 23))) >> 21;
  const uint32_t sub = f2u(u2f(a) + 128.0f) - 0x43000000u;  // + 2^7: ulp 2^-16
  uint32_t r = select_bits(a < 0x38800000u, sub, normal);    // below 2^-14
  r = select_bits(a0 > 0x7F800000u, 0x7Fu, r);
  return static_cast<uint8_t>(r | sign);
}

// FP16: bias 15, 10 mantissa bits, max 65504, min normal 2^-14, subnormal step 2^-24, NaN 0x7E00.
MFP8_HD uint16_t f32_to_f16(float x) {
  const uint32_t u = f2u(x), sign = (u >> 16) & 0x8000u, a0 = u & 0x7FFFFFFFu;
  const uint32_t a = a0 < 0x477FE000u ? a0 : 0x477FE000u;
  const uint32_t normal = (a + ((a >> 13) & 1u) + (0xFFFu - (112u << 23))) >> 13;
  const uint32_t sub = f2u(u2f(a) + 0.5f) - 0x3F000000u;  // + 2^-1: ulp 2^-24
  uint32_t r = select_bits(a < 0x38800000u, sub, normal);
  r = select_bits(a0 > 0x7F800000u, 0x7E00u, r);
  return static_cast<uint16_t>(r | sign);
}

// BF16: the top half of float32 rounded to nearest even, not saturating (BF16 storage is plain, and
// torch rounds overflow to inf). NaN keeps its sign and gets the quiet bit.
MFP8_HD uint16_t f32_to_bf16(float x) {
  const uint32_t u = f2u(x);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : r);
}

// ---------------------------------------------------------------------------------------------------
// Stochastic rounding (the master weight's optional write mode): |x| rounds up to the next representable
// magnitude with probability (|x| - lower) / (upper - lower), resolved to 13 (FP16) or 16 (BF16) random
// bits, so the expected stored value is x and an update far below half a step survives on average
// instead of being rounded away. The random bits come from a counter-based hash of (seed, element
// index): no state, the same bits on every thread split, on CPU and CUDA and in reference.sr_bits.

// lowbias32 (a 32-bit integer finaliser) of seed + index * golden ratio.
MFP8_HD uint32_t sr_bits(uint32_t seed, uint32_t index) {
  uint32_t x = seed + index * 0x9E3779B9u;
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// FP16, saturating like f32_to_f16. Normal results: 13 random bits added below FP16's last mantissa bit,
// then truncation (a carry may rebias into the next binade, and never past 65504: the clamped a is
// 65504 exactly, whose low 13 bits are zero). Subnormal results: |x| in units of 2^-24 (exact) plus a
// random fraction k * 2^-13, truncated (a float32 addition whose rounding the reference repeats).
MFP8_HD uint16_t f32_to_f16_sr(float x, uint32_t r) {
  const uint32_t u = f2u(x), sign = (u >> 16) & 0x8000u, a0 = u & 0x7FFFFFFFu;
  const uint32_t a = a0 < 0x477FE000u ? a0 : 0x477FE000u;
  const uint32_t noise = r & 0x1FFFu;
  const uint32_t normal = ((a + noise) >> 13) - (112u << 10);
  const uint32_t as = a < 0x38800000u ? a : 0x38800000u;  // keeps the (unused) float->int in range
  const float units = u2f(as) * 16777216.0f + static_cast<float>(static_cast<int32_t>(noise)) * 0x1p-13f;
  const uint32_t sub = static_cast<uint32_t>(static_cast<int32_t>(units));  // >= 0: truncation is floor
  uint32_t v = select_bits(a < 0x38800000u, sub, normal);
  v = select_bits(a0 > 0x7F800000u, 0x7E00u, v);
  return static_cast<uint16_t>(v | sign);
}

// BF16 (plain storage, not saturating, like f32_to_bf16): 16 random bits below BF16's last bit, then
// truncation; float32 subnormals are BF16 subnormals with the same step, so one rule covers every value.
MFP8_HD uint16_t f32_to_bf16_sr(float x, uint32_t r) {
  const uint32_t u = f2u(x);
  const uint32_t v = (u + (r & 0xFFFFu)) >> 16;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? ((u >> 16) | 0x40u) : v);
}

// ---------------------------------------------------------------------------------------------------
// Narrow formats -> float32, exact. The stored bits are first shifted into float32's exponent/mantissa
// position (w), so every later step is a 32-bit operation (gcc otherwise computes on bytes and widens
// each intermediate separately). Normal values rebias the exponent with one add; subnormals are the
// mantissa as an integer (exactly representable) times a power of two, so no float32 subnormal
// arithmetic is involved and the result is exact even with denormals-are-zero set.

MFP8_HD float e4m3_to_f32(uint8_t v) {
  const uint32_t w = static_cast<uint32_t>(v) << 20, mag = w & 0x07F00000u, sign = (w << 4) & 0x80000000u;
  const uint32_t sub = f2u(static_cast<float>(static_cast<int32_t>(mag)) * 0x1p-29f);  // mant * 2^-9
  uint32_t r = select_bits(mag < 0x00800000u, sub, mag + (120u << 23));
  r = select_bits(mag == 0x07F00000u, 0x7FC00000u, r);
  return u2f(r | sign);
}

MFP8_HD float e5m2_to_f32(uint8_t v) {
  const uint32_t w = static_cast<uint32_t>(v) << 21, mag = w & 0x0FE00000u, sign = (w << 3) & 0x80000000u;
  const uint32_t sub = f2u(static_cast<float>(static_cast<int32_t>(mag)) * 0x1p-37f);  // mant * 2^-16
  uint32_t r = select_bits(mag < 0x00800000u, sub, mag + (112u << 23));
  r = select_bits(mag >= 0x0F800000u, mag == 0x0F800000u ? 0x7F800000u : 0x7FC00000u, r);
  return u2f(r | sign);
}

MFP8_HD float f16_to_f32(uint16_t v) {
  const uint32_t w = static_cast<uint32_t>(v) << 13, mag = w & 0x0FFFE000u, sign = (w << 3) & 0x80000000u;
  const uint32_t sub = f2u(static_cast<float>(static_cast<int32_t>(mag)) * 0x1p-37f);  // mant * 2^-24
  uint32_t r = select_bits(mag < 0x00800000u, sub, mag + (112u << 23));
  r = select_bits(mag >= 0x0F800000u, mag == 0x0F800000u ? 0x7F800000u : 0x7FC00000u, r);
  return u2f(r | sign);
}

MFP8_HD float bf16_to_f32(uint16_t v) { return u2f(static_cast<uint32_t>(v) << 16); }

// ---------------------------------------------------------------------------------------------------
// Per-dtype traits for the templated CPU loops (and the runtime-dispatched CUDA helpers below).
// FP8 and FP16 storage is scaled (saturating cast of x * scale); FP32 and BF16 storage is plain.

template <DType D> struct Traits;

template <> struct Traits<DType::F32> {
  using T = float;
  static constexpr bool kScaled = false;
  static constexpr float kMax = FLT_MAX;
  MFP8_HD static float decode(T v) { return v; }
  MFP8_HD static T encode(float v) { return v; }
};
template <> struct Traits<DType::F16> {
  using T = uint16_t;
  static constexpr bool kScaled = true;
  static constexpr float kMax = 65504.0f;
  MFP8_HD static float decode(T v) { return f16_to_f32(v); }
  MFP8_HD static T encode(float v) { return f32_to_f16(v); }
};
template <> struct Traits<DType::BF16> {
  using T = uint16_t;
  static constexpr bool kScaled = false;
  static constexpr float kMax = 3.3895313892515355e38f;  // float(torch.finfo(torch.bfloat16).max)
  MFP8_HD static float decode(T v) { return bf16_to_f32(v); }
  MFP8_HD static T encode(float v) { return f32_to_bf16(v); }
};
template <> struct Traits<DType::E4M3> {
  using T = uint8_t;
  static constexpr bool kScaled = true;
  static constexpr float kMax = 448.0f;
  MFP8_HD static float decode(T v) { return e4m3_to_f32(v); }
  MFP8_HD static T encode(float v) { return f32_to_e4m3(v); }
};
template <> struct Traits<DType::E5M2> {
  using T = uint8_t;
  static constexpr bool kScaled = true;
  static constexpr float kMax = 57344.0f;
  MFP8_HD static float decode(T v) { return e5m2_to_f32(v); }
  MFP8_HD static T encode(float v) { return f32_to_e5m2(v); }
};

// reference.load: stored value as float32, times scale_inv for scaled storage.
template <DType D>
MFP8_HD float load_scaled(typename Traits<D>::T v, float scale_inv) {
  const float f = Traits<D>::decode(v);
  return Traits<D>::kScaled ? f * scale_inv : f;
}

// reference.store: cast(clamp(x * scale, -fmax, fmax)) for scaled storage (the encoders saturate),
// plain cast otherwise.
template <DType D>
MFP8_HD typename Traits<D>::T store_scaled(float x, float scale) {
  return Traits<D>::encode(Traits<D>::kScaled ? x * scale : x);
}

// Host-side dispatch: calls f(DTypeTag<d>{}) so a loop or kernel is compiled once per storage dtype.
template <DType D>
using DTypeTag = std::integral_constant<DType, D>;

template <class F>
inline void dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F32: f(DTypeTag<DType::F32>{}); break;
    case DType::F16: f(DTypeTag<DType::F16>{}); break;
    case DType::BF16: f(DTypeTag<DType::BF16>{}); break;
    case DType::E4M3: f(DTypeTag<DType::E4M3>{}); break;
    case DType::E5M2: f(DTypeTag<DType::E5M2>{}); break;
  }
}

// Runtime-dtype versions (CUDA kernels take the dtype as an argument; the branch is warp-uniform).
MFP8_HD bool is_scaled(DType d) { return d == DType::F16 || d == DType::E4M3 || d == DType::E5M2; }

MFP8_HD float dtype_max(DType d) {
  switch (d) {
    case DType::F16: return Traits<DType::F16>::kMax;
    case DType::BF16: return Traits<DType::BF16>::kMax;
    case DType::E4M3: return Traits<DType::E4M3>::kMax;
    case DType::E5M2: return Traits<DType::E5M2>::kMax;
    default: return Traits<DType::F32>::kMax;
  }
}

MFP8_HD int dtype_size(DType d) {
  return d == DType::F32 ? 4 : (d == DType::F16 || d == DType::BF16) ? 2 : 1;
}

// Raw stored value as float32 (no scale): tensor.float().
MFP8_HD float load_raw(const void* p, DType d, int64_t i) {
  switch (d) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::E4M3: return e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::E5M2: return e5m2_to_f32(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

MFP8_HD float load_value(const void* p, DType d, int64_t i, float scale_inv) {
  const float f = load_raw(p, d, i);
  return is_scaled(d) ? f * scale_inv : f;
}

MFP8_HD void store_value(void* p, DType d, int64_t i, float x, float scale) {
  const float y = is_scaled(d) ? x * scale : x;  // the scaled formats' encoders saturate
  switch (d) {
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(y); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(y); break;
    case DType::E4M3: static_cast<uint8_t*>(p)[i] = f32_to_e4m3(y); break;
    case DType::E5M2: static_cast<uint8_t*>(p)[i] = f32_to_e5m2(y); break;
    default: static_cast<float*>(p)[i] = y; break;
  }
}

// ---------------------------------------------------------------------------------------------------
// The scale rule, identical to scaling.compute_scale(_tensor): 2^clamp(floor(log2(fmax/amax)) - margin,
// -126, 126) with fmax/amax a float32 division; an infinite ratio gives 2^126; an amax of 0, inf, NaN
// (or negative) keeps `prev`.
MFP8_HD float compute_scale(float amax, float fmax, int margin, float prev) {
  if (!(amax > 0.0f && amax <= FLT_MAX)) return prev;
  const float ratio = div_rn(fmax, amax);
  long long e = 126;
  if (ratio <= FLT_MAX) {
    int fe = 0;
    (void)frexpf(ratio, &fe);  // ratio = m * 2^fe, m in [0.5, 1)
    e = static_cast<long long>(fe) - 1 - margin;
    e = e < -126 ? -126 : (e > 126 ? 126 : e);
  }
  return u2f(static_cast<uint32_t>(e + 127) << 23);
}

// ---------------------------------------------------------------------------------------------------
// AdamW: the float32 constants of one step (AdamWHyper.constants()) and the element-wise update of
// reference.adamw_math. Inputs are loaded values (scale_inv applied); used by both passes of the CPU
// kernel and by the CUDA kernel, so the math exists exactly once.
struct AdamWConsts {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, step_size, decay, eps, grad_scale;
};

struct AdamWOut {
  float p, m, v;
};

MFP8_HD AdamWOut adamw_update(float grad, float exp_avg, float exp_avg_sq, float master,
                              const AdamWConsts& c) {
  const float g = grad * c.grad_scale;
  AdamWOut o;
  o.m = exp_avg * c.beta1 + g * c.one_minus_beta1;
  o.v = exp_avg_sq * c.beta2 + (g * g) * c.one_minus_beta2;
  const float denom = div_rn(sqrt_rn(o.v), c.bc2_sqrt) + c.eps;
  o.p = master * c.decay - div_rn(o.m, denom) * c.step_size;
  return o;
}

// ---------------------------------------------------------------------------------------------------
// Device-side amax: a block reduction of abs bits, then one atomicMax per block on the float's bits
// (non-negative floats order like unsigned ints and NaN exceeds inf, so NaN propagates).
#if defined(__CUDACC__)
// Max of `bits` over the block (flat thread index `tid`, kThreads threads); the result is valid in
// thread 0. Ends with a barrier so the shared scratch can be reused by the next call.
template <int kThreads>
__device__ inline uint32_t block_max_bits(uint32_t bits, int tid) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size must be whole warps");
  __shared__ uint32_t warp_max[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) bits = max_bits(bits, __shfl_xor_sync(0xFFFFFFFFu, bits, off));
  const int warp = tid / 32, lane = tid % 32;
  if (lane == 0) warp_max[warp] = bits;
  __syncthreads();
  uint32_t r = 0u;
  if (warp == 0) {
    r = lane < kThreads / 32 ? warp_max[lane] : 0u;
    for (int off = 16; off > 0; off >>= 1) r = max_bits(r, __shfl_xor_sync(0xFFFFFFFFu, r, off));
  }
  __syncthreads();
  return r;
}

// Grid size for a grid-stride loop over n elements: enough blocks to fill the GPU, no more.
inline unsigned int grid_blocks(int64_t n, int threads) {
  int device = 0, sms = 80;
  if (cudaGetDevice(&device) == cudaSuccess)
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = (n + threads - 1) / threads, cap = static_cast<int64_t>(sms) * 8;
  return static_cast<unsigned int>(want < 1 ? 1 : (want > cap ? cap : want));
}

// Fold a block's amax bits into a float amax in global memory (initialised to 0).
__device__ inline void atomic_amax(float* amax, uint32_t bits) {
  if (bits != 0u) atomicMax(reinterpret_cast<unsigned int*>(amax), bits);
}
#endif

}  // namespace mfp8
