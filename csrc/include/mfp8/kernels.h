// Framework-agnostic kernel API: raw pointers, element counts, a DType per buffer, and float32 scalars
// passed by pointer (scale, scale_inv, amax) so the CUDA versions read and write device memory without
// host syncs. The semantics of every function are those of megatron_fp8/fp8/reference.py; callers
// (csrc/bindings.cpp) validate shapes, dtypes and devices. "Scaled" dtypes are F16, E4M3 and E5M2.
#pragma once

#include <cstdint>

#include "mfp8/numerics.h"

namespace mfp8 {

// One parameter of the multi-tensor AdamW step (the fields of reference.AdamWTensors). All buffers hold
// `n` elements. A scale_inv pointer is used only for a scaled dtype: read for inputs, read and then
// overwritten with the fresh scale_inv for outputs. `weight` may be null (no extra copy). With
// master_sr the master is stored with stochastic rounding (numerics.h), random bits sr_bits(seed, i).
struct AdamWParam {
  int64_t n;
  void* master;
  DType master_dtype;
  float* master_sinv;
  const void* grad;
  DType grad_dtype;
  const float* grad_sinv;
  void* exp_avg;
  DType exp_avg_dtype;
  float* exp_avg_sinv;
  void* exp_avg_sq;
  DType exp_avg_sq_dtype;
  float* exp_avg_sq_sinv;
  void* weight;
  DType weight_dtype;
  float* weight_sinv;
  // Stochastic rounding of the master's store (F16 or BF16 master only): 0 = round to nearest even.
  int32_t master_sr;
  uint32_t master_sr_seed;
};

// ---- CPU (OpenMP) ----------------------------------------------------------------------------------

// out[i] = store(x[i], *scale, out_dtype); *amax = NaN-propagating max |x| (0 for n == 0).
void scale_cast_amax_cpu(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t n,
                         const float* scale, float* amax);

// *amax = NaN-propagating max |x| over n stored values (0 for n == 0), read-only: reference.amax.
void amax_cpu(const void* x, DType x_dtype, int64_t n, float* amax);

// As scale_cast_amax for a row-major rows x cols x, also writing out_t (cols x rows) = out transposed.
void cast_transpose_amax_cpu(const void* x, DType x_dtype, void* out, void* out_t, DType out_dtype,
                             int64_t rows, int64_t cols, const float* scale, float* amax);

// acc = store(load(acc, *acc_sinv) + grad, fresh scale); *acc_sinv = 1 / that scale; *amax = amax(sum).
void fp8_accumulate_cpu(void* acc, DType acc_dtype, float* acc_sinv, const void* grad, DType grad_dtype,
                        int64_t n, int margin, float* amax);

// out = store(factor * sum_s load(shards[s], scale_invs[s]), fresh scale) for num_shards contiguous
// shards of n elements; writes *out_sinv and *amax. prev_sinv may be null (previous scale 1).
void sum_shards_cpu(const void* shards, DType shard_dtype, int64_t num_shards, const float* scale_invs,
                    void* out, DType out_dtype, int64_t n, float factor, int margin,
                    const float* prev_sinv, float* out_sinv, float* amax);

// One AdamW step over `count` parameters, in place.
void adamw_step_cpu(const AdamWParam* params, int64_t count, const AdamWConsts& consts, int margin);

// FP8 GEMM, out[m, n] = alpha * sum_k A[m, k] B[n, k] (then row_scale_a[m] * col_scale_b[n]), float32
// accumulation. Each operand is FP8 (E4M3/E5M2) stored [rows, K] row-major or, `transposed`, [K, rows];
// block_scales (only for [rows, K] storage) multiply element (r, k) by block_scales[r * scale_blocks +
// k / kGemmBlock] while decoding.
constexpr int64_t kGemmBlock = 128;

struct Fp8GemmOperand {
  const void* data;
  DType dtype;
  bool transposed;
  const float* block_scales;
  int64_t scale_blocks;
};

// The float32 GEMM the kernel runs on each thread's block: C[m, n] (row-major, ldc) = alpha * A'[m, k] @
// B'[n, k]^T, where A' is a (row-major [m, k], lda) or, a_t, the transpose of a row-major [k, m] matrix,
// and B' likewise ([n, k], or [k, n] when b_t). Called from inside an OpenMP region: it must run on the
// calling thread.
using SgemmFn = void (*)(bool a_t, bool b_t, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                         int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, void* ctx);

struct Fp8GemmArgs {
  int64_t m, n, k;
  Fp8GemmOperand a, b;
  float alpha;               // tensorwise scale_inv_a * scale_inv_b (1 otherwise)
  const float* row_scale_a;  // rowwise: [m] and [n], both or neither
  const float* col_scale_b;
  void* out;                 // [m, n] row-major, F32 or BF16
  DType out_dtype;
  SgemmFn gemm;
  void* gemm_ctx;
  int64_t blocks_per_thread;  // blocks of the split dimension per thread, taken dynamically (>= 1)
};

// An SgemmFn on BF16 dot-product units (gemm_bf16.cpp, AVX-512-BF16): exact for operands that are BF16
// values (decoded FP8), float32 accumulation in another order. Available only when built for and run on
// such a CPU (bf16_dot_available()).
bool bf16_dot_available();
void bf16_dot_gemm(bool a_t, bool b_t, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc, void* ctx);

// Floats of workspace fp8_gemm_cpu needs (the decoded operands, and a float32 result for a BF16 output).
int64_t fp8_gemm_workspace_floats(const Fp8GemmArgs& args);
void fp8_gemm_cpu(const Fp8GemmArgs& args, float* workspace);

// ---- CUDA (stream is a cudaStream_t; every pointer is device memory) -------------------------------
// Launchers are asynchronous and return nullptr, or the CUDA error string of a failed launch.
#if defined(MFP8_WITH_CUDA)
const char* scale_cast_amax_cuda(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t n,
                                 const float* scale, float* amax, void* stream);

const char* cast_transpose_amax_cuda(const void* x, DType x_dtype, void* out, void* out_t,
                                     DType out_dtype, int64_t rows, int64_t cols, const float* scale,
                                     float* amax, void* stream);

const char* fp8_accumulate_cuda(void* acc, DType acc_dtype, float* acc_sinv, const void* grad,
                                DType grad_dtype, int64_t n, int margin, float* amax, void* stream);

const char* sum_shards_cuda(const void* shards, DType shard_dtype, int64_t num_shards,
                            const float* scale_invs, void* out, DType out_dtype, int64_t n, float factor,
                            int margin, const float* prev_sinv, float* out_sinv, float* amax,
                            void* stream);

// Device scratch the AdamW launcher needs: floats per parameter (the amaxes of m, v and p).
constexpr int64_t kAdamWWorkspacePerParam = 3;

// `params` is a host array (its pointers are device memory); `workspace` holds
// kAdamWWorkspacePerParam * count device floats.
const char* adamw_step_cuda(const AdamWParam* params, int64_t count, const AdamWConsts& consts,
                            int margin, float* workspace, void* stream);
#endif

}  // namespace mfp8
