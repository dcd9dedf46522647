// The FP8 GEMM's per-block GEMM on BF16 dot-product units (AVX-512-BF16: vdpbf16ps), for CPUs that have
// them; an alternative to torch's float32 BLAS behind the same mfp8::SgemmFn interface (gemm.cpp decodes,
// this multiplies).
//
// Exactness: the operands gemm.cpp hands over are decoded FP8 values, times power-of-two scales where
// block scales apply, so each has at most 4 significant bits and converts to BF16 exactly (the conversion
// below is an exact re-encoding, not a rounding). vdpbf16ps forms each product exactly in float32 (8 x 8
// significant bits) and adds it to a float32 accumulator with round-to-nearest-even, so the result is
// the float32 GEMM of the same values in another summation order: pairs of K are added in turn, 16
// columns at a time. Like every vdpbf16ps user it treats float32 subnormals as zero (DAZ/FTZ): an
// operand or partial sum below 2^-126 in magnitude would be flushed; decoded FP8 values never are
// (E5M2's smallest is 2^-16) and the scales keep the model's values far above it (the same limit as the
// block-scaled decode documents in fp8/cpu_gemm.py).
//
// Layout: A' (m x k) is packed into panels of kMr rows, each [k/2][kMr] pairs of BF16 (one 32-bit word
// per row and K pair); B' (n x k) into panels of kNr columns, each [k/2][kNr] pairs (VNNI order). The
// micro-kernel keeps kMr x kNr float32 accumulators in registers (kMr x 2 zmm), reads one B row pair (2
// zmm) per K pair and broadcasts one A pair per row. Packing buffers are per calling thread and kept.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mfp8/kernels.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MFP8_HAVE_BF16_DOT 1
#endif

namespace mfp8 {

#if defined(MFP8_HAVE_BF16_DOT)
namespace {

constexpr int64_t kMr = 8;   // rows per micro-tile
constexpr int64_t kNr = 32;  // columns per micro-tile (two zmm of float32)

// The upper half of a float32 that is exactly a BF16 value.
inline uint32_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u >> 16;
}

// One 32-bit word: the BF16 pair (x at K = 2p, y at K = 2p + 1), low half first as vdpbf16ps reads it.
inline uint32_t pair(float x, float y) { return bf16_bits(x) | (bf16_bits(y) << 16); }

// Pack `rows` rows of a matrix X' (rows x k) into panels of `width` rows: out[panel][p][r] = pair of
// X'(panel * width + r, 2p) and X'(., 2p + 1); rows beyond `rows` and a K beyond `k` are zero.
// X'(r, q) = transposed ? x[q * ld + r] : x[r * ld + q].
void pack_panels(const float* x, int64_t ld, bool transposed, int64_t rows, int64_t k, int64_t width,
                 uint32_t* out) {
  const int64_t pairs = (k + 1) / 2, panels = (rows + width - 1) / width;
  for (int64_t pn = 0; pn < panels; ++pn) {
    uint32_t* dst = out + pn * pairs * width;
    const int64_t r0 = pn * width, nr = std::min(width, rows - r0);
    if (transposed) {
      // K rows of the storage are contiguous in r: row pairs (2p, 2p + 1) give `nr` words at once.
      for (int64_t p = 0; p < pairs; ++p) {
        const float* lo = x + (2 * p) * ld + r0;
        const float* hi = 2 * p + 1 < k ? x + (2 * p + 1) * ld + r0 : nullptr;
        uint32_t* d = dst + p * width;
        int64_t r = 0;
        for (; r + 16 <= nr; r += 16) {
          const __m512 a = _mm512_loadu_ps(lo + r);
          const __m512 b = hi ? _mm512_loadu_ps(hi + r) : _mm512_setzero_ps();
          // exact BF16 values: taking the upper halves is the conversion
          const __m512i ha = _mm512_maskz_srli_epi32(__mmask16(0xffff), _mm512_castps_si512(a), 16);
          const __m512i hb = _mm512_and_si512(_mm512_castps_si512(b), _mm512_set1_epi32(-65536));
          _mm512_storeu_si512(d + r, _mm512_or_si512(ha, hb));
        }
        for (; r < nr; ++r) d[r] = pair(lo[r], hi ? hi[r] : 0.0f);
        for (; r < width; ++r) d[r] = 0;
      }
    } else {
      // Each row is contiguous in K: 16 pairs of one row per vector, stored with stride `width`.
      for (int64_t r = 0; r < width; ++r) {
        if (r >= nr) {
          for (int64_t p = 0; p < pairs; ++p) dst[p * width + r] = 0;
          continue;
        }
        const float* row = x + (r0 + r) * ld;
        int64_t p = 0;
        alignas(64) uint32_t words[16];
        for (; 2 * p + 32 <= k; p += 16) {
          const __m512i lo = _mm512_castps_si512(_mm512_loadu_ps(row + 2 * p));
          const __m512i hi = _mm512_castps_si512(_mm512_loadu_ps(row + 2 * p + 16));
          // words j = (row[2p + 2j] >> 16) | (row[2p + 2j + 1] & 0xffff0000): an odd/even merge of
          // the 32 floats, done as a 16-bit permute of their upper halves.
          const __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                               31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
          _mm512_store_si512(words, _mm512_permutex2var_epi16(lo, idx, hi));
          for (int j = 0; j < 16; ++j) dst[(p + j) * width + r] = words[j];
        }
        for (; p < pairs; ++p) dst[p * width + r] = pair(row[2 * p], 2 * p + 1 < k ? row[2 * p + 1] : 0.0f);
      }
    }
  }
}

// c[rows x cols] (ldc) = alpha * A-panel . B-panel over `pairs` K pairs; rows <= kMr, cols <= kNr.
inline void micro_kernel(const uint32_t* ap, const uint32_t* bp, int64_t pairs, float alpha, float* c,
                         int64_t ldc, int64_t rows, int64_t cols) {
  __m512 acc[kMr][2];
  for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + p * kNr);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + p * kNr + 16);
    const uint32_t* a = ap + p * kMr;
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  const __m512 s = _mm512_set1_ps(alpha);
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols <= 16 ? __mmask16(0) : __mmask16((1u << (cols - 16)) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, _mm512_mul_ps(acc[r][0], s));
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, _mm512_mul_ps(acc[r][1], s));
  }
}

struct PackBuffers {
  std::vector<uint32_t> a, b;
};

}  // namespace

bool bf16_dot_available() { return __builtin_cpu_supports("avx512bf16"); }

void bf16_dot_gemm(bool a_t, bool b_t, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc, void*) {
  thread_local PackBuffers buf;
  const int64_t pairs = (k + 1) / 2;
  const int64_t mp = (m + kMr - 1) / kMr, np = (n + kNr - 1) / kNr;
  if (static_cast<int64_t>(buf.a.size()) < mp * kMr * pairs) buf.a.resize(mp * kMr * pairs);
  if (static_cast<int64_t>(buf.b.size()) < np * kNr * pairs) buf.b.resize(np * kNr * pairs);
  pack_panels(a, lda, a_t, m, k, kMr, buf.a.data());
  pack_panels(b, ldb, b_t, n, k, kNr, buf.b.data());
  for (int64_t j = 0; j < np; ++j) {
    const uint32_t* bp = buf.b.data() + j * pairs * kNr;
    const int64_t cols = std::min(kNr, n - j * kNr);
    for (int64_t i = 0; i < mp; ++i)
      micro_kernel(buf.a.data() + i * pairs * kMr, bp, pairs, alpha, c + i * kMr * ldc + j * kNr, ldc,
                   std::min(kMr, m - i * kMr), cols);
  }
}

#else

bool bf16_dot_available() { return false; }

void bf16_dot_gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                   float*, int64_t, void*) {}

#endif

}  // namespace mfp8
