// FP8 GEMM on the CPU at the float32 rate, in one OpenMP region: the threads decode the FP8 operands to
// float32 in a reused workspace (block scales applied while decoding) and, block by block of output
// columns (or rows), decode that block's rows of the other operand, run the float32 GEMM (the caller's
// BLAS, on one thread) and apply the epilogue (rowwise scales, BF16 rounding) while it is in cache.
//
// Why one region: the decode, GEMM and epilogue as separate torch ops cost a thread-team start-up each,
// and a fresh float32 temporary per operand (page faults and zeroing for every large one); on a loaded
// machine every team start-up also waits for a time slice. Here the operands decode into a workspace
// that the caller keeps between calls, and the threads meet once, at the end.
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
// Blocks of the split dimension are multiples of this (whole cache lines of the output).
constexpr int64_t kSplitUnit = 16;

struct Plan {
  bool split_n;     // split N (each block: columns of the output, rows of B) or M
  int64_t extent;   // N or M
  int64_t block;    // elements of the split dimension per block
  int64_t blocks;
  int threads;
  int64_t shared_floats;  // one thread's decoded copy of the operand every block reads
};

Plan plan(const Fp8GemmArgs& g) {
  Plan p{};
  p.split_n = g.n >= g.m;
  p.extent = p.split_n ? g.n : g.m;
  const int64_t units = (p.extent + kSplitUnit - 1) / kSplitUnit;
  const int64_t threads = g.m * g.n * g.k < kSerialMacs ? 1 : std::min<int64_t>(omp_get_max_threads(), units);
  const int64_t want = std::min(units, threads * std::max<int64_t>(1, g.blocks_per_thread));
  p.block = (units + want - 1) / want * kSplitUnit;
  p.blocks = (p.extent + p.block - 1) / p.block;
  p.threads = static_cast<int>(std::min<int64_t>(threads, p.blocks));
  p.shared_floats = (p.split_n ? g.m : g.n) * g.k;
  return p;
}

}  // namespace

int64_t fp8_gemm_workspace_floats(const Fp8GemmArgs& g) {
  const Plan p = plan(g);
  return p.threads * p.shared_floats + (p.split_n ? g.n : g.m) * g.k +
         (g.out_dtype == DType::F32 ? 0 : g.m * g.n);
}

// Each thread decodes the whole shared operand (A when N is split, else B) into its own copy, so no
// thread waits for another before its GEMMs: on a loaded machine a worker often starts a time slice
// late, and the threads that did start take its blocks meanwhile (dynamic schedule). The shared
// operand is the small one at the model's shapes (256 tokens x K), so the copies cost little.
void fp8_gemm_cpu(const Fp8GemmArgs& g, float* ws) {
  const Plan p = plan(g);
  float* own_ws = ws + p.threads * p.shared_floats;
  float* c = g.out_dtype == DType::F32 ? static_cast<float*>(g.out) : own_ws + p.extent * g.k;
  const Stored sa = stored(g.a, g.m, g.k), sb = stored(g.b, g.n, g.k);
  const Fp8GemmOperand& shared = p.split_n ? g.a : g.b;
  const Fp8GemmOperand& own = p.split_n ? g.b : g.a;
  const Stored& ss = p.split_n ? sa : sb;
  const Stored& so = p.split_n ? sb : sa;
  const float alpha = std::isfinite(g.alpha) ? g.alpha : 1.0f;
  auto run_block = [&](const float* wa, const float* wb, int64_t blk) {
    const int64_t e0 = blk * p.block, e1 = std::min(p.extent, e0 + p.block);
    decode_rows(own, so, own_ws, e0, e1);
    const int64_t m0 = p.split_n ? 0 : e0, m1 = p.split_n ? g.m : e1;
    const int64_t n0 = p.split_n ? e0 : 0, n1 = p.split_n ? e1 : g.n;
    g.gemm(g.a.transposed, g.b.transposed, m1 - m0, n1 - n0, g.k, alpha, row_ptr(g.a, sa, wa, m0), sa.cols,
           row_ptr(g.b, sb, wb, n0), sb.cols, c + m0 * g.n + n0, g.n, g.gemm_ctx);
    epilogue(g, c, m0, m1, n0, n1);
  };
  if (p.threads == 1) {
    // Small GEMMs run on the calling thread, outside any OpenMP region: inside even a one-thread region
    // the BLAS call would open a nested team of its own on every call (measured 150-1000 us for a
    // 64x192x64 GEMM with 2 threads, against 24 us here).
    decode(shared, ss.cols, ws, 0, ss.rows, 0, ss.cols);
    for (int64_t blk = 0; blk < p.blocks; ++blk) run_block(p.split_n ? ws : own_ws, p.split_n ? own_ws : ws, blk);
    return;
  }
#pragma omp parallel num_threads(p.threads)
  {
    float* shared_ws = ws + omp_get_thread_num() * p.shared_floats;
    decode(shared, ss.cols, shared_ws, 0, ss.rows, 0, ss.cols);
    const float* wa = p.split_n ? shared_ws : own_ws;
    const float* wb = p.split_n ? own_ws : shared_ws;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t blk = 0; blk < p.blocks; ++blk) run_block(wa, wb, blk);
  }
}

}  // namespace mfp8
