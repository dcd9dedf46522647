// Multi-tensor AdamW on CUDA. Parameters go in groups of kGroup descriptors passed by value as a kernel
// argument (no host->device copy); blockIdx.y picks the parameter, blockIdx.x strides over its elements.
// Pass 1 computes the new values and atomically folds their amaxes into a workspace, pass 2 recomputes
// them and stores them with scales derived on device from those amaxes, and a finalize kernel writes the
// new scale_invs (pass 2 reads the old ones). The element math is adamw_update (numerics.h), the same
// function the CPU kernel uses. Dtypes differ per parameter, so loads/stores switch at run time (the
// branch is uniform across the grid).
#include <cuda_runtime.h>

#include "mfp8/kernels.h"
#include "mfp8/numerics.h"

namespace mfp8 {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 16;  // 16 descriptors of 136 bytes stay well inside the 4 KiB parameter limit

struct Group {
  AdamWParam p[kGroup];
};

__device__ inline bool needs_amax(const AdamWParam& t) {
  return is_scaled(t.exp_avg_dtype) || is_scaled(t.exp_avg_sq_dtype) || is_scaled(t.master_dtype) ||
         (t.weight != nullptr && is_scaled(t.weight_dtype));
}

__device__ inline float sinv_of(DType d, const float* p) { return is_scaled(d) ? *p : 1.0f; }

// The fresh scale of an output from its amax; 1 for plain storage (store_value then ignores it).
__device__ inline float fresh_scale(DType d, const float* sinv, float amax, int margin) {
  return is_scaled(d) ? compute_scale(amax, dtype_max(d), margin, recip_rn(*sinv)) : 1.0f;
}

__device__ inline AdamWOut update_at(const AdamWParam& t, int64_t i, float gs, float ms, float vs, float ps,
                                     const AdamWConsts& c) {
  return adamw_update(load_value(t.grad, t.grad_dtype, i, gs), load_value(t.exp_avg, t.exp_avg_dtype, i, ms),
                      load_value(t.exp_avg_sq, t.exp_avg_sq_dtype, i, vs),
                      load_value(t.master, t.master_dtype, i, ps), c);
}

__global__ void __launch_bounds__(kThreads)
    pass1_kernel(const __grid_constant__ Group g, AdamWConsts c, float* ws) {
  const AdamWParam& t = g.p[blockIdx.y];
  if (!needs_amax(t)) return;  // uniform per block: no barrier is skipped by part of it
  const float gs = sinv_of(t.grad_dtype, t.grad_sinv), ms = sinv_of(t.exp_avg_dtype, t.exp_avg_sinv);
  const float vs = sinv_of(t.exp_avg_sq_dtype, t.exp_avg_sq_sinv), ps = sinv_of(t.master_dtype, t.master_sinv);
  uint32_t am = 0, av = 0, ap = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < t.n; i += stride) {
    const AdamWOut o = update_at(t, i, gs, ms, vs, ps, c);
    am = max_bits(am, abs_bits(o.m));
    av = max_bits(av, abs_bits(o.v));
    ap = max_bits(ap, abs_bits(o.p));
  }
  am = block_max_bits<kThreads>(am, threadIdx.x);
  av = block_max_bits<kThreads>(av, threadIdx.x);
  ap = block_max_bits<kThreads>(ap, threadIdx.x);
  if (threadIdx.x == 0) {
    float* slot = ws + kAdamWWorkspacePerParam * blockIdx.y;
    atomic_amax(slot + 0, am);
    atomic_amax(slot + 1, av);
    atomic_amax(slot + 2, ap);
  }
}

__global__ void __launch_bounds__(kThreads)
    pass2_kernel(const __grid_constant__ Group g, AdamWConsts c, int margin, const float* ws) {
  const AdamWParam& t = g.p[blockIdx.y];
  const float* amax = ws + kAdamWWorkspacePerParam * blockIdx.y;
  const float gs = sinv_of(t.grad_dtype, t.grad_sinv), ms = sinv_of(t.exp_avg_dtype, t.exp_avg_sinv);
  const float vs = sinv_of(t.exp_avg_sq_dtype, t.exp_avg_sq_sinv), ps = sinv_of(t.master_dtype, t.master_sinv);
  const float m_scale = fresh_scale(t.exp_avg_dtype, t.exp_avg_sinv, amax[0], margin);
  const float v_scale = fresh_scale(t.exp_avg_sq_dtype, t.exp_avg_sq_sinv, amax[1], margin);
  const float p_scale = fresh_scale(t.master_dtype, t.master_sinv, amax[2], margin);
  const float w_scale = t.weight ? fresh_scale(t.weight_dtype, t.weight_sinv, amax[2], margin) : 1.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < t.n; i += stride) {
    const AdamWOut o = update_at(t, i, gs, ms, vs, ps, c);
    store_value(t.exp_avg, t.exp_avg_dtype, i, o.m, m_scale);
    store_value(t.exp_avg_sq, t.exp_avg_sq_dtype, i, o.v, v_scale);
    if (t.master_sr && t.master_dtype == DType::F16)
      static_cast<uint16_t*>(t.master)[i] = f32_to_f16_sr(o.p * p_scale, sr_bits(t.master_sr_seed, static_cast<uint32_t>(i)));
    else if (t.master_sr)  // BF16 (the binding admits no other dtype)
      static_cast<uint16_t*>(t.master)[i] = f32_to_bf16_sr(o.p, sr_bits(t.master_sr_seed, static_cast<uint32_t>(i)));
    else
      store_value(t.master, t.master_dtype, i, o.p, p_scale);
    if (t.weight) store_value(t.weight, t.weight_dtype, i, o.p, w_scale);
  }
}

// One thread per parameter: the new scale_inv of every scaled output, after pass 2 has read the old.
__global__ void finalize_kernel(const __grid_constant__ Group g, int count, int margin, const float* ws) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= count) return;
  const AdamWParam& t = g.p[k];
  const float* amax = ws + kAdamWWorkspacePerParam * k;
  if (is_scaled(t.exp_avg_dtype))
    *t.exp_avg_sinv = recip_rn(fresh_scale(t.exp_avg_dtype, t.exp_avg_sinv, amax[0], margin));
  if (is_scaled(t.exp_avg_sq_dtype))
    *t.exp_avg_sq_sinv = recip_rn(fresh_scale(t.exp_avg_sq_dtype, t.exp_avg_sq_sinv, amax[1], margin));
  if (is_scaled(t.master_dtype))
    *t.master_sinv = recip_rn(fresh_scale(t.master_dtype, t.master_sinv, amax[2], margin));
  if (t.weight && is_scaled(t.weight_dtype))
    *t.weight_sinv = recip_rn(fresh_scale(t.weight_dtype, t.weight_sinv, amax[2], margin));
}

}  // namespace

const char* adamw_step_cuda(const AdamWParam* params, int64_t count, const AdamWConsts& consts,
                            int margin, float* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (count <= 0) return nullptr;
  if (cudaMemsetAsync(workspace, 0, sizeof(float) * kAdamWWorkspacePerParam * count, s) != cudaSuccess)
    return cudaGetErrorString(cudaGetLastError());
  for (int64_t first = 0; first < count; first += kGroup) {
    const int size = static_cast<int>(count - first < kGroup ? count - first : kGroup);
    Group g{};
    int64_t largest = 0;
    bool any_amax = false;
    for (int k = 0; k < size; ++k) {
      const AdamWParam& t = params[first + k];
      g.p[k] = t;
      largest = t.n > largest ? t.n : largest;
      any_amax = any_amax || is_scaled(t.exp_avg_dtype) || is_scaled(t.exp_avg_sq_dtype) ||
                 is_scaled(t.master_dtype) || (t.weight != nullptr && is_scaled(t.weight_dtype));
    }
    float* ws = workspace + kAdamWWorkspacePerParam * first;
    const dim3 grid(grid_blocks(largest, kThreads), static_cast<unsigned int>(size));
    if (largest > 0) {
      if (any_amax) pass1_kernel<<<grid, kThreads, 0, s>>>(g, consts, ws);
      pass2_kernel<<<grid, kThreads, 0, s>>>(g, consts, margin, ws);
    }
    finalize_kernel<<<1, kGroup, 0, s>>>(g, size, margin, ws);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mfp8
