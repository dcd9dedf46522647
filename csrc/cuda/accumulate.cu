// fp8_accumulate on CUDA: pass 1 takes the amax of load(acc) + grad, pass 2 recomputes the sum and
// stores it with the scale derived on device from that amax, and a one-thread kernel then replaces
// acc_scale_inv (pass 2 still needs the old one). No host synchronisation.
#include <cuda_runtime.h>

#include "mfp8/kernels.h"
#include "mfp8/numerics.h"

namespace mfp8 {
namespace {

constexpr int kThreads = 256;

template <DType D>
using T = typename Traits<D>::T;

template <DType A>
__device__ inline float fresh_scale(const float* amax, const float* acc_sinv, int margin) {
  return compute_scale(*amax, Traits<A>::kMax, margin, recip_rn(*acc_sinv));
}

template <DType A, DType G>
__global__ void __launch_bounds__(kThreads)
    amax_kernel(const T<A>* __restrict__ acc, const float* acc_sinv, const T<G>* __restrict__ grad, int64_t n,
                float* amax) {
  const float sinv = *acc_sinv;
  uint32_t m = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    m = max_bits(m, abs_bits(load_scaled<A>(acc[i], sinv) + Traits<G>::decode(grad[i])));
  m = block_max_bits<kThreads>(m, threadIdx.x);
  if (threadIdx.x == 0) atomic_amax(amax, m);
}

// kWithAmax: plain accumulators skip pass 1 and take the amax while storing (the scale is unused).
template <DType A, DType G, bool kWithAmax>
__global__ void __launch_bounds__(kThreads)
    store_kernel(T<A>* __restrict__ acc, const float* acc_sinv, const T<G>* __restrict__ grad, int64_t n,
                 int margin, float* amax) {
  const float sinv = *acc_sinv;
  const float scale = kWithAmax ? 1.0f : fresh_scale<A>(amax, acc_sinv, margin);
  uint32_t m = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const float total = load_scaled<A>(acc[i], sinv) + Traits<G>::decode(grad[i]);
    m = max_bits(m, abs_bits(total));
    acc[i] = store_scaled<A>(total, scale);
  }
  if (kWithAmax) {
    m = block_max_bits<kThreads>(m, threadIdx.x);
    if (threadIdx.x == 0) atomic_amax(amax, m);
  }
}

template <DType A>
__global__ void finalize_kernel(float* acc_sinv, const float* amax, int margin) {
  *acc_sinv = recip_rn(fresh_scale<A>(amax, acc_sinv, margin));
}

}  // namespace

const char* fp8_accumulate_cuda(void* acc, DType acc_dtype, float* acc_sinv, const void* grad,
                                DType grad_dtype, int64_t n, int margin, float* amax, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (cudaMemsetAsync(amax, 0, sizeof(float), s) != cudaSuccess) return cudaGetErrorString(cudaGetLastError());
  const unsigned int blocks = grid_blocks(n, kThreads);
  dispatch_dtype(acc_dtype, [&](auto ta) {
    dispatch_dtype(grad_dtype, [&](auto tg) {
      constexpr DType A = decltype(ta)::value, G = decltype(tg)::value;
      T<A>* a = static_cast<T<A>*>(acc);
      const T<G>* g = static_cast<const T<G>*>(grad);
      if (Traits<A>::kScaled) {
        if (n > 0) {
          amax_kernel<A, G><<<blocks, kThreads, 0, s>>>(a, acc_sinv, g, n, amax);
          store_kernel<A, G, false><<<blocks, kThreads, 0, s>>>(a, acc_sinv, g, n, margin, amax);
        }
      } else if (n > 0) {
        store_kernel<A, G, true><<<blocks, kThreads, 0, s>>>(a, acc_sinv, g, n, margin, amax);
      }
      finalize_kernel<A><<<1, 1, 0, s>>>(acc_sinv, amax, margin);
    });
  });
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mfp8
