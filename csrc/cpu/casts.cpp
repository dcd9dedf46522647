// scale_cast_amax and cast_transpose_amax on the CPU: one pass, amax taken from the input values; and
// amax alone (a weight's, before its current-scaling cast).
#include <algorithm>
#include <cstring>

#include "common.h"
#include "mfp8/kernels.h"

namespace mfp8 {
namespace {

template <DType O>
using Out = typename Traits<O>::T;

// out[lo:hi] = store(x[lo:hi], scale); returns the max abs bits of x[lo:hi].
template <DType I, DType O>
uint32_t cast_span(const typename Traits<I>::T* __restrict x, Out<O>* __restrict out, int64_t lo,
                   int64_t hi, float scale) {
  uint32_t m = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const float v = Traits<I>::decode(x[i]);
    m = std::max(m, abs_bits(v));
    out[i] = store_scaled<O>(v, scale);
  }
  return m;
}

template <DType I, DType O>
void scale_cast(const void* xv, void* ov, int64_t n, float scale, float* amax) {
  const auto* x = static_cast<const typename Traits<I>::T*>(xv);
  auto* out = static_cast<Out<O>*>(ov);
  uint32_t m = 0;
#pragma omp parallel if (n >= cpu::kSerialBelow) reduction(max : m)
  {
    const cpu::Range r = cpu::thread_range(n);
    m = std::max(m, cast_span<I, O>(x, out, r.lo, r.hi, scale));
  }
  *amax = u2f(m);
}

// Square tiles: each tile is cast row by row (vectorised) into a local buffer whose rows are copied to
// `out`, transposed into a second local buffer, whose rows are copied to `out_t`. Working between local
// buffers avoids the outputs' (often power-of-two) row strides, which map a tile's rows onto the same
// few L1 sets, and every global write is a contiguous row segment.
constexpr int64_t kTile = 64;

// Exchange the bit fields of b selected by mask with those of a selected by mask << s.
inline void swap_fields(uint64_t& a, uint64_t& b, int s, uint64_t mask) {
  const uint64_t t = ((a >> s) ^ b) & mask;
  a ^= t << s;
  b ^= t;
}

// Transpose a B x B block (B = 8 / sizeof(T)) held as B 64-bit words, by the recursive block swap: the
// whole block moves through registers instead of element by element.
template <class T>
inline void transpose_block(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  constexpr int B = 8 / sizeof(T);
  uint64_t a[B];
  for (int i = 0; i < B; ++i) std::memcpy(&a[i], src + i * src_stride, 8);
  // Swap fields of 1, 2, 4... elements between words 1, 2, 4... apart.
  for (int bits = 8 * sizeof(T), dist = 1; bits < 64; bits *= 2, dist *= 2) {
    const uint64_t mask = bits == 8 ? 0x00FF00FF00FF00FFull : bits == 16 ? 0x0000FFFF0000FFFFull : 0xFFFFFFFFull;
    for (int i = 0; i < B; ++i)
      if ((i & dist) == 0) swap_fields(a[i], a[i + dist], bits, mask);
  }
  for (int i = 0; i < B; ++i) std::memcpy(dst + i * dst_stride, &a[i], 8);
}

// tile_t[c][r] = tile[r][c] for the h x w corner of a tile (both local, so no cache-set conflicts).
template <class T>
void transpose_tile(const T (*tile)[kTile], int64_t h, int64_t w, T (*tile_t)[kTile]) {
  constexpr int64_t B = sizeof(T) <= 2 ? 8 / sizeof(T) : 1;
  const int64_t hb = B > 1 ? h / B * B : 0, wb = B > 1 ? w / B * B : 0;
  for (int64_t c = 0; c < wb; c += B)
    for (int64_t r = 0; r < hb; r += B) transpose_block(&tile[r][c], kTile, &tile_t[c][r], kTile);
  for (int64_t c = 0; c < w; ++c)  // what the blocks did not cover: ragged edges, or everything (4-byte T)
    for (int64_t r = (c < wb ? hb : 0); r < h; ++r) tile_t[c][r] = tile[r][c];
}

// A tile row to its place in an output; full rows have a constant size, so they compile to vector moves
// (a variable-size memcpy becomes `rep movs`, slow for 64 bytes).
template <class T>
inline void copy_row(T* dst, const T* src, int64_t len) {
  if (len == kTile)
    std::memcpy(dst, src, kTile * sizeof(T));
  else
    std::memcpy(dst, src, len * sizeof(T));
}

template <DType I, DType O>
void cast_transpose(const void* xv, void* ov, void* otv, int64_t rows, int64_t cols, float scale,
                    float* amax) {
  const auto* x = static_cast<const typename Traits<I>::T*>(xv);
  auto* out = static_cast<Out<O>*>(ov);
  auto* out_t = static_cast<Out<O>*>(otv);
  const int64_t tr = (rows + kTile - 1) / kTile, tc = (cols + kTile - 1) / kTile;
  uint32_t m = 0;
#pragma omp parallel for collapse(2) schedule(static) reduction(max : m) \
    if (rows * cols >= cpu::kSerialBelow)
  for (int64_t bi = 0; bi < tr; ++bi) {
    for (int64_t bj = 0; bj < tc; ++bj) {
      alignas(64) Out<O> tile[kTile][kTile];
      const int64_t r0 = bi * kTile, h = std::min(rows - r0, kTile);
      const int64_t c0 = bj * kTile, w = std::min(cols - c0, kTile);
      for (int64_t r = 0; r < h; ++r) {
        const auto* src = x + (r0 + r) * cols + c0;
        // The tile's rows are kTile separate streams, too many for the hardware prefetcher: fetch this
        // row's segment of the next tile while casting this one.
        if (c0 + 2 * kTile <= cols)
          for (int64_t k = 0; k < kTile; k += 64 / sizeof(*src)) __builtin_prefetch(src + kTile + k);
        m = std::max(m, cast_span<I, O>(src, tile[r], 0, w, scale));
        copy_row(out + (r0 + r) * cols + c0, tile[r], w);
      }
      alignas(64) Out<O> tile_t[kTile][kTile];
      transpose_tile<Out<O>>(tile, h, w, tile_t);
      for (int64_t c = 0; c < w; ++c) copy_row(out_t + (c0 + c) * rows + r0, tile_t[c], h);
    }
  }
  *amax = u2f(m);
}

template <DType I>
uint32_t amax_span(const typename Traits<I>::T* __restrict x, int64_t lo, int64_t hi) {
  uint32_t m = 0;
  for (int64_t i = lo; i < hi; ++i) m = std::max(m, abs_bits(Traits<I>::decode(x[i])));
  return m;
}

}  // namespace

void amax_cpu(const void* xv, DType x_dtype, int64_t n, float* amax) {
  uint32_t m = 0;
  dispatch_dtype(x_dtype, [&](auto ti) {
    const auto* x = static_cast<const typename Traits<decltype(ti)::value>::T*>(xv);
#pragma omp parallel if (n >= cpu::kSerialBelow) reduction(max : m)
    {
      const cpu::Range r = cpu::thread_range(n);
      m = std::max(m, amax_span<decltype(ti)::value>(x, r.lo, r.hi));
    }
  });
  *amax = u2f(m);
}

void scale_cast_amax_cpu(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t n,
                         const float* scale, float* amax) {
  const float s = *scale;
  dispatch_dtype(x_dtype, [&](auto ti) {
    dispatch_dtype(out_dtype, [&](auto to) {
      scale_cast<decltype(ti)::value, decltype(to)::value>(x, out, n, s, amax);
    });
  });
}

void cast_transpose_amax_cpu(const void* x, DType x_dtype, void* out, void* out_t, DType out_dtype,
                             int64_t rows, int64_t cols, const float* scale, float* amax) {
  const float s = *scale;
  dispatch_dtype(x_dtype, [&](auto ti) {
    dispatch_dtype(out_dtype, [&](auto to) {
      cast_transpose<decltype(ti)::value, decltype(to)::value>(x, out, out_t, rows, cols, s, amax);
    });
  });
}

}  // namespace mfp8
