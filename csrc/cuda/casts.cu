// scale_cast_amax and cast_transpose_amax on CUDA: grid-stride casts, block amax + one atomicMax.
#include <cuda_runtime.h>

#include "mfp8/kernels.h"
#include "mfp8/numerics.h"

namespace mfp8 {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32, kTileRows = kThreads / kTile;  // cast_transpose: 32x32 tiles, 32x8 threads

template <DType D>
using T = typename Traits<D>::T;

template <DType I, DType O>
__global__ void __launch_bounds__(kThreads)
    scale_cast_kernel(const T<I>* __restrict__ x, T<O>* __restrict__ out, int64_t n,
                      const float* __restrict__ scale_ptr, float* amax) {
  const float scale = *scale_ptr;
  uint32_t m = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const float v = Traits<I>::decode(x[i]);
    m = max_bits(m, abs_bits(v));
    out[i] = store_scaled<O>(v, scale);
  }
  m = block_max_bits<kThreads>(m, threadIdx.x);
  if (threadIdx.x == 0) atomic_amax(amax, m);
}

// Each 32x32 tile is cast once: written row-major to out and through shared memory to out_t, so both
// global writes are coalesced.
template <DType I, DType O>
__global__ void __launch_bounds__(kThreads)
    cast_transpose_kernel(const T<I>* __restrict__ x, T<O>* __restrict__ out, T<O>* __restrict__ out_t,
                          int64_t rows, int64_t cols, const float* __restrict__ scale_ptr, float* amax) {
  __shared__ T<O> tile[kTile][kTile + 1];
  const float scale = *scale_ptr;
  const int64_t tiles_c = (cols + kTile - 1) / kTile, tiles = tiles_c * ((rows + kTile - 1) / kTile);
  const int tx = threadIdx.x, ty = threadIdx.y;
  uint32_t m = 0;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r0 = (t / tiles_c) * kTile, c0 = (t % tiles_c) * kTile;
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t r = r0 + k, c = c0 + tx;
      if (r < rows && c < cols) {
        const float v = Traits<I>::decode(x[r * cols + c]);
        m = max_bits(m, abs_bits(v));
        const T<O> q = store_scaled<O>(v, scale);
        out[r * cols + c] = q;
        tile[k][tx] = q;
      }
    }
    __syncthreads();
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t c = c0 + k, r = r0 + tx;
      if (r < rows && c < cols) out_t[c * rows + r] = tile[tx][k];
    }
    __syncthreads();
  }
  m = block_max_bits<kThreads>(m, ty * kTile + tx);
  if (ty == 0 && tx == 0) atomic_amax(amax, m);
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* scale_cast_amax_cuda(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t n,
                                 const float* scale, float* amax, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(amax, 0, sizeof(float), s) != cudaSuccess) return launch_status();
  if (n == 0) return nullptr;
  const unsigned int blocks = grid_blocks(n, kThreads);
  dispatch_dtype(x_dtype, [&](auto ti) {
    dispatch_dtype(out_dtype, [&](auto to) {
      constexpr DType I = decltype(ti)::value, O = decltype(to)::value;
      scale_cast_kernel<I, O><<<blocks, kThreads, 0, s>>>(static_cast<const T<I>*>(x), static_cast<T<O>*>(out),
                                                           n, scale, amax);
    });
  });
  return launch_status();
}

const char* cast_transpose_amax_cuda(const void* x, DType x_dtype, void* out, void* out_t,
                                     DType out_dtype, int64_t rows, int64_t cols, const float* scale,
                                     float* amax, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(amax, 0, sizeof(float), s) != cudaSuccess) return launch_status();
  if (rows == 0 || cols == 0) return nullptr;
  const int64_t tiles = ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
  const unsigned int blocks = grid_blocks(tiles * kThreads, kThreads);
  const dim3 threads(kTile, kTileRows);
  dispatch_dtype(x_dtype, [&](auto ti) {
    dispatch_dtype(out_dtype, [&](auto to) {
      constexpr DType I = decltype(ti)::value, O = decltype(to)::value;
      cast_transpose_kernel<I, O><<<blocks, threads, 0, s>>>(static_cast<const T<I>*>(x), static_cast<T<O>*>(out),
                                                             static_cast<T<O>*>(out_t), rows, cols, scale, amax);
    });
  });
  return launch_status();
}

}  // namespace mfp8
