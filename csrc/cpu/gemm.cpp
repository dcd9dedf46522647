// FP8 GEMM on the CPU at the float32 rate, in one OpenMP region: each thread decodes its share of the
// FP8 operands to float32 in a reused workspace (block scales applied while decoding), runs the float32
// GEMM (the caller's BLAS, on one thread) on its own block of output columns (or rows), and applies the
// epilogue (rowwise scales, BF16 rounding) to that block while it is still in cache.
//
// Why one region: the decode, GEMM and epilogue as separate torch ops cost a thread-team start-up each,
// and a fresh float32 temporary per operand (page faults and zeroing for every large one); on a loaded
// machine every team start-up also waits for a time slice. Here the operands decode into a workspace
// that the caller keeps between calls, and the threads meet once (after decoding the shared operand).
#include <algorithm>
#include <cmath>

#include "common.h"
#include "mfp8/kernels.h"

namespace mfp8 {
namespace {

// Rows [r0, r1) x columns [c0, c1) of a row-major FP8 matrix with `ld` columns, decoded to float32 at the
// same offsets in dst. With block scales, element (r, c) is multiplied by bs[r * nb + c / kBlock] (a
// power of two: exact unless the product leaves float32's normal range).
template <DType D>
void decode_rect(const uint8_t* __restrict src, int64_t ld, float* __restrict dst, int64_t r0, int64_t r1,
                 int64_t c0, int64_t c1, const float* bs, int64_t nb) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* __restrict s = src + r * ld;
    float* __restrict d = dst + r * ld;
    if (bs == nullptr) {
      for (int64_t c = c0; c < c1; ++c) d[c] = Traits<D>::decode(s[c]);
      continue;
    }
    for (int64_t b0 = c0; b0 < c1;) {
      const int64_t b1 = std::min(c1, (b0 / kGemmBlock + 1) * kGemmBlock);
      const float f = bs[r * nb + b0 / kGemmBlock];
      for (int64_t c = b0; c < b1; ++c) d[c] = Traits<D>::decode(s[c]) * f;
      b0 = b1;
    }
  }
}

void decode(const Fp8GemmOperand& op, int64_t ld, float* dst, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const auto* src = static_cast<const uint8_t*>(op.data);
  if (op.dtype == DType::E4M3)
    decode_rect<DType::E4M3>(src, ld, dst, r0, r1, c0, c1, op.block_scales, op.scale_blocks);
  else
    decode_rect<DType::E5M2>(src, ld, dst, r0, r1, c0, c1, op.block_scales, op.scale_blocks);
}

// An operand's stored shape: [rows, K] or, transposed, [K, rows].
struct Stored {
  int64_t rows, cols;
};

Stored stored(const Fp8GemmOperand& op, int64_t rows, int64_t k) {
  return op.transposed ? Stored{k, rows} : Stored{rows, k};
}

// Decode the whole operand's storage rows [lo, hi) of this thread's split of them.
void decode_share(const Fp8GemmOperand& op, const Stored& s, float* ws, int t, int nt) {
  const int64_t per = (s.rows + nt - 1) / nt, lo = std::min(s.rows, t * per), hi = std::min(s.rows, lo + per);
  decode(op, s.cols, ws, lo, hi, 0, s.cols);
}

// Decode the logical rows [e0, e1) of an operand (storage rows, or a column stripe when transposed).
void decode_rows(const Fp8GemmOperand& op, const Stored& s, float* ws, int64_t e0, int64_t e1) {
  if (op.transposed)
    decode(op, s.cols, ws, 0, s.rows, e0, e1);
  else
    decode(op, s.cols, ws, e0, e1, 0, s.cols);
}

// Pointer and leading dimension of logical row e of a decoded operand.
const float* row_ptr(const Fp8GemmOperand& op, const Stored& s, const float* ws, int64_t e) {
  return op.transposed ? ws + e : ws + e * s.cols;
}

// Scales not folded into the GEMM and the output dtype, on rows [m0, m1) x columns [n0, n1) of the
// float32 result: rowwise scales, and a non-finite tensorwise one (an overflow marked by a NaN scale_inv:
// BLAS need not propagate a NaN alpha, and the result must be NaN as _scaled_mm's is).
void epilogue(const Fp8GemmArgs& g, float* c, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const bool alpha_after = !std::isfinite(g.alpha);
  for (int64_t i = m0; i < m1; ++i) {
    float* __restrict row = c + i * g.n;
    if (alpha_after)
      for (int64_t j = n0; j < n1; ++j) row[j] = row[j] * g.alpha;
    if (g.row_scale_a != nullptr) {
      const float sa = g.row_scale_a[i];
      const float* __restrict sb = g.col_scale_b;
      for (int64_t j = n0; j < n1; ++j) row[j] = row[j] * sa * sb[j];
    }
    if (g.out_dtype == DType::BF16) {
      uint16_t* __restrict o = static_cast<uint16_t*>(g.out) + i * g.n;
      for (int64_t j = n0; j < n1; ++j) o[j] = f32_to_bf16(row[j]);
    }
  }
}

// Below this many multiply-adds the GEMM runs on one thread (team start-up would cost more).
constexpr int64_t kSerialMacs = int64_t{1} << 20;
// Each thread's block of the split dimension is a multiple of this (whole cache lines of the output).
constexpr int64_t kSplitUnit = 16;

}  // namespace

int64_t fp8_gemm_workspace_floats(const Fp8GemmArgs& g) {
  return g.m * g.k + g.n * g.k + (g.out_dtype == DType::F32 ? 0 : g.m * g.n);
}

void fp8_gemm_cpu(const Fp8GemmArgs& g, float* ws) {
  float* wa = ws;
  float* wb = wa + g.m * g.k;
  float* c = g.out_dtype == DType::F32 ? static_cast<float*>(g.out) : wb + g.n * g.k;
  const Stored sa = stored(g.a, g.m, g.k), sb = stored(g.b, g.n, g.k);
  // Split the larger of M and N: each thread decodes its own rows of that operand (A or B) and its share
  // of the other one, which every thread reads (one barrier).
  const bool split_n = g.n >= g.m;
  const int64_t extent = split_n ? g.n : g.m;
  const int64_t units = (extent + kSplitUnit - 1) / kSplitUnit;
  int64_t threads = std::min<int64_t>(omp_get_max_threads(), units);
  if (g.m * g.n * g.k < kSerialMacs) threads = 1;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = (units + nt - 1) / nt;
    const int64_t e0 = std::min(extent, t * per * kSplitUnit), e1 = std::min(extent, (t + 1) * per * kSplitUnit);
    const Fp8GemmOperand& shared = split_n ? g.a : g.b;
    const Fp8GemmOperand& own = split_n ? g.b : g.a;
    decode_share(shared, split_n ? sa : sb, split_n ? wa : wb, t, nt);
    decode_rows(own, split_n ? sb : sa, split_n ? wb : wa, e0, e1);
#pragma omp barrier
    if (e1 > e0) {
      const int64_t m0 = split_n ? 0 : e0, m1 = split_n ? g.m : e1;
      const int64_t n0 = split_n ? e0 : 0, n1 = split_n ? e1 : g.n;
      const float alpha = std::isfinite(g.alpha) ? g.alpha : 1.0f;
      g.gemm(g.a.transposed, g.b.transposed, m1 - m0, n1 - n0, g.k, alpha, row_ptr(g.a, sa, wa, m0), sa.cols,
             row_ptr(g.b, sb, wb, n0), sb.cols, c + m0 * g.n + n0, g.n, g.gemm_ctx);
      epilogue(g, c, m0, m1, n0, n1);
    }
  }
}

}  // namespace mfp8
