// sum_shards on CUDA (the owner's side of the FP8 reduce-scatter): pass 1 takes the amax of the float32
// sum, pass 2 recomputes the sum and stores it with the scale derived on device, and a one-thread kernel
// writes out_scale_inv. Plain outputs (FP32/BF16) skip pass 1.
#include <cuda_runtime.h>

#include "mfp8/kernels.h"
#include "mfp8/numerics.h"

namespace mfp8 {
namespace {

constexpr int kThreads = 256;

template <DType D>
using T = typename Traits<D>::T;

// factor * sum_s load(shards[s][i], sinv[s]), in shard order (0 + x first, as the reference).
template <DType S>
__device__ inline float shard_sum(const T<S>* __restrict__ shards, int64_t num, const float* __restrict__ sinv,
                                  int64_t n, int64_t i, float factor) {
  float total = 0.0f;
  for (int64_t s = 0; s < num; ++s) total = total + load_scaled<S>(shards[s * n + i], sinv[s]);
  return total * factor;
}

template <DType O>
__device__ inline float out_scale(const float* amax, const float* prev_sinv, int margin) {
  if (!Traits<O>::kScaled) return 1.0f;
  return compute_scale(*amax, Traits<O>::kMax, margin, prev_sinv ? recip_rn(*prev_sinv) : 1.0f);
}

template <DType S>
__global__ void __launch_bounds__(kThreads)
    amax_kernel(const T<S>* __restrict__ shards, int64_t num, const float* __restrict__ sinv, int64_t n,
                float factor, float* amax) {
  uint32_t m = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    m = max_bits(m, abs_bits(shard_sum<S>(shards, num, sinv, n, i, factor)));
  m = block_max_bits<kThreads>(m, threadIdx.x);
  if (threadIdx.x == 0) atomic_amax(amax, m);
}

template <DType S, DType O>
__global__ void __launch_bounds__(kThreads)
    store_kernel(const T<S>* __restrict__ shards, int64_t num, const float* __restrict__ sinv, int64_t n,
                 float factor, int margin, const float* prev_sinv, T<O>* __restrict__ out, float* amax) {
  const float scale = out_scale<O>(amax, prev_sinv, margin);
  uint32_t m = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const float total = shard_sum<S>(shards, num, sinv, n, i, factor);
    m = max_bits(m, abs_bits(total));
    out[i] = store_scaled<O>(total, scale);
  }
  if (!Traits<O>::kScaled) {  // no pass 1: the amax is taken here
    m = block_max_bits<kThreads>(m, threadIdx.x);
    if (threadIdx.x == 0) atomic_amax(amax, m);
  }
}

template <DType O>
__global__ void finalize_kernel(const float* amax, const float* prev_sinv, int margin, float* out_sinv) {
  *out_sinv = recip_rn(out_scale<O>(amax, prev_sinv, margin));
}

}  // namespace

const char* sum_shards_cuda(const void* shards, DType shard_dtype, int64_t num_shards,
                            const float* scale_invs, void* out, DType out_dtype, int64_t n, float factor,
                            int margin, const float* prev_sinv, float* out_sinv, float* amax,
                            void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(amax, 0, sizeof(float), s) != cudaSuccess) return cudaGetErrorString(cudaGetLastError());
  const unsigned int blocks = grid_blocks(n, kThreads);
  dispatch_dtype(shard_dtype, [&](auto ts) {
    dispatch_dtype(out_dtype, [&](auto to) {
      constexpr DType S = decltype(ts)::value, O = decltype(to)::value;
      const T<S>* sh = static_cast<const T<S>*>(shards);
      if (n > 0) {
        if (Traits<O>::kScaled)
          amax_kernel<S><<<blocks, kThreads, 0, s>>>(sh, num_shards, scale_invs, n, factor, amax);
        store_kernel<S, O><<<blocks, kThreads, 0, s>>>(sh, num_shards, scale_invs, n, factor, margin, prev_sinv,
                                                       static_cast<T<O>*>(out), amax);
      }
      finalize_kernel<O><<<1, 1, 0, s>>>(amax, prev_sinv, margin, out_sinv);
    });
  });
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mfp8
