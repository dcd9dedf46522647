// Python bindings of the csrc kernels (the only file that sees torch). Each function validates its
// tensors, allocates outputs and dispatches to the CPU implementation or, when built with
// MFP8_WITH_CUDA and the tensors live on a GPU, to the CUDA launcher on the current stream. Signatures
// and results match megatron_fp8/fp8/reference.py; megatron_fp8/fp8/kernels.py adapts adamw_step.
#include <torch/extension.h>

#include <omp.h>

#include <optional>
#include <string>
#include <vector>

#include "mfp8/kernels.h"

#if defined(MFP8_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {

using mfp8::DType;
using torch::Tensor;

DType to_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat8_e4m3fn: return DType::E4M3;
    case at::kFloat8_e5m2: return DType::E5M2;
    default:
      TORCH_CHECK(false, "megatron_fp8 kernels: ", what, " has dtype ", t,
                  "; supported: float32, float16, bfloat16, float8_e4m3fn, float8_e5m2");
  }
}

void check_dense(const Tensor& t, const char* what) {
  TORCH_CHECK(t.is_contiguous(), "megatron_fp8 kernels: ", what, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), "megatron_fp8 kernels: ", what,
              " is on unsupported device ", t.device());
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* what) {
  TORCH_CHECK(t.device() == ref.device(), "megatron_fp8 kernels: ", what, " is on ", t.device(),
              " but the data is on ", ref.device());
}

// A float32 scalar (scale, scale_inv) on the data's device, read or written through its pointer.
void check_scalar(const Tensor& t, const Tensor& ref, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, "megatron_fp8 kernels: ", what,
              " must be a float32 tensor with one element, got ", t.scalar_type(), " of shape ", t.sizes());
  check_same_device(t, ref, what);
}

// A 0-dim float32 output (amax, scale_inv); every kernel writes it, so it is not zero-filled.
Tensor new_scalar(const Tensor& like) { return torch::empty({}, like.options().dtype(at::kFloat)); }

bool on_cuda(const Tensor& t) {
#if defined(MFP8_WITH_CUDA)
  return t.is_cuda();
#else
  TORCH_CHECK(!t.is_cuda(), "megatron_fp8 kernels were built without CUDA; got a tensor on ", t.device());
  return false;
#endif
}

// Keep our OpenMP team the size torch uses (torch.set_num_threads), even with a separate runtime.
// The CPU kernels then run without the GIL, as torch's own ops do.
void sync_threads() { omp_set_num_threads(at::get_num_threads()); }

#if defined(MFP8_WITH_CUDA)
void* stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
void check_launch(const char* err) { TORCH_CHECK(err == nullptr, "megatron_fp8 CUDA kernel failed: ", err); }
#define MFP8_CUDA_GUARD(t) const c10::cuda::CUDAGuard guard_((t).device())
#endif

std::tuple<Tensor, Tensor> scale_cast_amax(const Tensor& x, const Tensor& scale, at::ScalarType out_dtype) {
  check_dense(x, "x");
  check_scalar(scale, x, "scale");
  const DType xd = to_dtype(x.scalar_type(), "x"), od = to_dtype(out_dtype, "out_dtype");
  Tensor out = torch::empty_like(x, x.options().dtype(out_dtype));
  Tensor amax = new_scalar(x);
  if (on_cuda(x)) {
#if defined(MFP8_WITH_CUDA)
    MFP8_CUDA_GUARD(x);
    check_launch(mfp8::scale_cast_amax_cuda(x.data_ptr(), xd, out.data_ptr(), od, x.numel(),
                                            scale.data_ptr<float>(), amax.data_ptr<float>(), stream_of(x)));
#endif
  } else {
    sync_threads();
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::scale_cast_amax_cpu(x.data_ptr(), xd, out.data_ptr(), od, x.numel(), scale.data_ptr<float>(),
                              amax.data_ptr<float>());
  }
  return {out, amax};
}

Tensor amax(const Tensor& x) {
  check_dense(x, "x");
  TORCH_CHECK(x.device().is_cpu(), "amax: the kernel runs on CPU tensors, got one on ", x.device());
  const DType xd = to_dtype(x.scalar_type(), "x");
  Tensor out = new_scalar(x);
  sync_threads();
  const py::gil_scoped_release no_gil;
  mfp8::amax_cpu(x.data_ptr(), xd, x.numel(), out.data_ptr<float>());
  return out;
}

std::tuple<Tensor, Tensor, Tensor> cast_transpose_amax(const Tensor& x, const Tensor& scale,
                                                       at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() == 2, "cast_transpose expects a 2-D tensor, got shape ", x.sizes());
  check_dense(x, "x");
  check_scalar(scale, x, "scale");
  const DType xd = to_dtype(x.scalar_type(), "x"), od = to_dtype(out_dtype, "out_dtype");
  const int64_t rows = x.size(0), cols = x.size(1);
  Tensor out = torch::empty({rows, cols}, x.options().dtype(out_dtype));
  Tensor out_t = torch::empty({cols, rows}, x.options().dtype(out_dtype));
  Tensor amax = new_scalar(x);
  if (on_cuda(x)) {
#if defined(MFP8_WITH_CUDA)
    MFP8_CUDA_GUARD(x);
    check_launch(mfp8::cast_transpose_amax_cuda(x.data_ptr(), xd, out.data_ptr(), out_t.data_ptr(), od, rows,
                                                cols, scale.data_ptr<float>(), amax.data_ptr<float>(),
                                                stream_of(x)));
#endif
  } else {
    sync_threads();
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::cast_transpose_amax_cpu(x.data_ptr(), xd, out.data_ptr(), out_t.data_ptr(), od, rows, cols,
                                  scale.data_ptr<float>(), amax.data_ptr<float>());
  }
  return {out, out_t, amax};
}

Tensor fp8_accumulate(Tensor acc, Tensor acc_scale_inv, const Tensor& grad, int64_t margin) {
  check_dense(acc, "acc");
  check_dense(grad, "grad");
  check_same_device(grad, acc, "grad");
  check_scalar(acc_scale_inv, acc, "acc_scale_inv");
  TORCH_CHECK(grad.numel() == acc.numel(), "fp8_accumulate: grad has ", grad.numel(), " elements, acc has ",
              acc.numel());
  const DType ad = to_dtype(acc.scalar_type(), "acc"), gd = to_dtype(grad.scalar_type(), "grad");
  Tensor amax = new_scalar(acc);
  if (on_cuda(acc)) {
#if defined(MFP8_WITH_CUDA)
    MFP8_CUDA_GUARD(acc);
    check_launch(mfp8::fp8_accumulate_cuda(acc.data_ptr(), ad, acc_scale_inv.data_ptr<float>(), grad.data_ptr(),
                                           gd, acc.numel(), static_cast<int>(margin), amax.data_ptr<float>(),
                                           stream_of(acc)));
#endif
  } else {
    sync_threads();
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::fp8_accumulate_cpu(acc.data_ptr(), ad, acc_scale_inv.data_ptr<float>(), grad.data_ptr(), gd,
                             acc.numel(), static_cast<int>(margin), amax.data_ptr<float>());
  }
  return amax;
}

std::tuple<Tensor, Tensor, Tensor> sum_shards(const Tensor& shards, const Tensor& scale_invs,
                                              at::ScalarType out_dtype, double factor, int64_t margin,
                                              const std::optional<Tensor>& prev_scale_inv) {
  TORCH_CHECK(shards.dim() >= 1, "sum_shards: shards must have a leading shard dimension");
  check_dense(shards, "shards");
  check_dense(scale_invs, "scale_invs");
  check_same_device(scale_invs, shards, "scale_invs");
  const int64_t num = shards.size(0);
  TORCH_CHECK(scale_invs.scalar_type() == at::kFloat && scale_invs.numel() == num,
              "sum_shards: scale_invs must be float32 with one element per shard (", num, "), got ",
              scale_invs.scalar_type(), " of shape ", scale_invs.sizes());
  if (prev_scale_inv) check_scalar(*prev_scale_inv, shards, "prev_scale_inv");
  const DType sd = to_dtype(shards.scalar_type(), "shards"), od = to_dtype(out_dtype, "out_dtype");
  Tensor out = torch::empty(shards.sizes().slice(1), shards.options().dtype(out_dtype));
  Tensor out_sinv = new_scalar(shards), amax = new_scalar(shards);
  const float* prev = prev_scale_inv ? prev_scale_inv->data_ptr<float>() : nullptr;
  const float f = static_cast<float>(factor);  // reference._f32: round to the float32 the kernels get
  if (on_cuda(shards)) {
#if defined(MFP8_WITH_CUDA)
    MFP8_CUDA_GUARD(shards);
    check_launch(mfp8::sum_shards_cuda(shards.data_ptr(), sd, num, scale_invs.data_ptr<float>(), out.data_ptr(),
                                       od, out.numel(), f, static_cast<int>(margin), prev,
                                       out_sinv.data_ptr<float>(), amax.data_ptr<float>(), stream_of(shards)));
#endif
  } else {
    sync_threads();
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::sum_shards_cpu(shards.data_ptr(), sd, num, scale_invs.data_ptr<float>(), out.data_ptr(), od,
                         out.numel(), f, static_cast<int>(margin), prev, out_sinv.data_ptr<float>(),
                         amax.data_ptr<float>());
  }
  return {out, out_sinv, amax};
}

// ---- FP8 GEMM (CPU) ----------------------------------------------------------------------------------

// mfp8::SgemmFn on torch's BLAS: addmm on non-owning views of the workspace and the output. The kernel
// calls it from inside its OpenMP region, where torch and MKL run on the calling thread.
void aten_sgemm(bool a_t, bool b_t, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                const float* b, int64_t ldb, float* c, int64_t ldc, void*) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto view = [&](const float* p, int64_t rows, int64_t cols, int64_t ld) {
    return torch::from_blob(const_cast<float*>(p), {rows, cols}, {ld, 1}, f32);
  };
  Tensor a_mk = a_t ? view(a, k, m, lda).t() : view(a, m, k, lda);
  Tensor b_kn = b_t ? view(b, k, n, ldb) : view(b, n, k, ldb).t();
  Tensor out = view(c, m, n, ldc);
  at::addmm_out(out, out, a_mk, b_kn, /*beta=*/0, /*alpha=*/alpha);
}

// The decoded operands' workspace, kept per calling thread between GEMMs (grown, never shrunk): a fresh
// float32 temporary per operand would page-fault and zero every large one again.
float* gemm_workspace(int64_t floats) {
  thread_local Tensor ws;
  if (!ws.defined() || ws.numel() < floats) ws = torch::empty({std::max<int64_t>(floats, 1)}, at::kFloat);
  return ws.data_ptr<float>();
}

mfp8::Fp8GemmOperand gemm_operand(const Tensor& t, bool transposed, const std::optional<Tensor>& blocks,
                                  int64_t rows, int64_t k, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.device().is_cpu() && t.is_contiguous(), "fp8_gemm: ", what,
              " must be a contiguous 2-D CPU tensor, got shape ", t.sizes(), " on ", t.device());
  const DType d = to_dtype(t.scalar_type(), what);
  TORCH_CHECK(d == DType::E4M3 || d == DType::E5M2, "fp8_gemm: ", what, " must be float8_e4m3fn or float8_e5m2");
  mfp8::Fp8GemmOperand op{t.data_ptr(), d, transposed, nullptr, 0};
  if (blocks) {
    const int64_t nb = (k + mfp8::kGemmBlock - 1) / mfp8::kGemmBlock;
    TORCH_CHECK(!transposed, "fp8_gemm: block scales need ", what, " stored [rows, K]");
    TORCH_CHECK(blocks->scalar_type() == at::kFloat && blocks->is_contiguous() && blocks->dim() == 2 &&
                    blocks->size(0) == rows && blocks->size(1) == nb,
                "fp8_gemm: ", what, " block scales must be contiguous float32 [", rows, ", ", nb, "], got ",
                blocks->sizes());
    op.block_scales = blocks->data_ptr<float>();
    op.scale_blocks = nb;
  }
  return op;
}

// out = (a @ b.T) scaled, for a [M, K] (stored [K, M] when a_transposed) and b [N, K] (stored [K, N] when
// b_transposed), FP8 on the CPU. Scales: "tensorwise" (scale_a, scale_b one element each), "rowwise"
// ([M] and [N] elements), "block" (scale_a [M, ceil(K/128)], scale_b [N, ceil(K/128)], applied while
// decoding). Float32 accumulation; out_dtype float32, bfloat16 or float16. blocks_per_thread: how finely
// the larger of M and N is split (blocks taken dynamically; more blocks cost more BLAS packing of the
// shared operand, fewer leave a late-starting thread's share to it alone). dot: the per-block GEMM,
// "fp32" (torch's BLAS), "bf16" (BF16 dot-product units, gemm_bf16.cpp) or "auto" (bf16 where available).
Tensor fp8_gemm(const Tensor& a, const Tensor& b, const Tensor& scale_a, const Tensor& scale_b,
                const std::string& scaling, at::ScalarType out_dtype, bool a_transposed, bool b_transposed,
                int64_t blocks_per_thread, const std::string& dot) {
  TORCH_CHECK(dot == "auto" || dot == "fp32" || dot == "bf16", "fp8_gemm: dot must be auto, fp32 or bf16, got '",
              dot, "'");
  TORCH_CHECK(dot != "bf16" || mfp8::bf16_dot_available(),
              "fp8_gemm: dot='bf16' needs a CPU with AVX-512-BF16 and a build for it (-march=native there)");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "fp8_gemm: operands must be 2-D, got ", a.sizes(), " and ", b.sizes());
  const int64_t m = a_transposed ? a.size(1) : a.size(0), k = a_transposed ? a.size(0) : a.size(1);
  const int64_t n = b_transposed ? b.size(1) : b.size(0), kb = b_transposed ? b.size(0) : b.size(1);
  TORCH_CHECK(k == kb, "fp8_gemm: inner dimensions differ (", k, " and ", kb, ")");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "fp8_gemm: out_dtype must be float32, bfloat16 or float16, got ", out_dtype);
  const bool block = scaling == "block", rowwise = scaling == "rowwise";
  TORCH_CHECK(block || rowwise || scaling == "tensorwise", "fp8_gemm: unknown scaling '", scaling, "'");
  for (const Tensor* s : {&scale_a, &scale_b})
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->device().is_cpu() && s->is_contiguous(),
                "fp8_gemm: scales must be contiguous float32 CPU tensors");
  mfp8::Fp8GemmArgs g{};
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = gemm_operand(a, a_transposed, block ? std::optional<Tensor>(scale_a) : std::nullopt, m, k, "a");
  g.b = gemm_operand(b, b_transposed, block ? std::optional<Tensor>(scale_b) : std::nullopt, n, k, "b");
  g.alpha = 1.0f;
  if (rowwise) {
    TORCH_CHECK(scale_a.numel() == m && scale_b.numel() == n, "fp8_gemm: rowwise scales need ", m, " and ", n,
                " elements, got ", scale_a.numel(), " and ", scale_b.numel());
    g.row_scale_a = scale_a.data_ptr<float>();
    g.col_scale_b = scale_b.data_ptr<float>();
  } else if (!block) {
    TORCH_CHECK(scale_a.numel() == 1 && scale_b.numel() == 1, "fp8_gemm: tensorwise scales need one element each");
    g.alpha = scale_a.data_ptr<float>()[0] * scale_b.data_ptr<float>()[0];  // powers of two: exact
  }
  const at::ScalarType kernel_out = out_dtype == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  Tensor out = torch::empty({m, n}, a.options().dtype(kernel_out));
  if (k == 0) return out.zero_().to(out_dtype);
  if (m == 0 || n == 0) return out.to(out_dtype);
  g.out = out.data_ptr();
  g.out_dtype = to_dtype(kernel_out, "out");
  const bool bf16 = dot == "bf16" || (dot == "auto" && mfp8::bf16_dot_available());
  g.gemm = bf16 ? &mfp8::bf16_dot_gemm : &aten_sgemm;
  g.gemm_ctx = nullptr;
  TORCH_CHECK(blocks_per_thread >= 1, "fp8_gemm: blocks_per_thread must be >= 1");
  g.blocks_per_thread = blocks_per_thread;
  sync_threads();  // the workspace depends on the thread count
  float* ws = gemm_workspace(mfp8::fp8_gemm_workspace_floats(g));
  {
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::fp8_gemm_cpu(g, ws);
  }
  return out_dtype == kernel_out ? out : out.to(out_dtype);
}

// One AdamW parameter as a list in reference.AdamWTensors field order:
// [master, grad, exp_avg, exp_avg_sq, master_sinv, grad_sinv, exp_avg_sinv, exp_avg_sq_sinv, weight,
//  weight_sinv]; None where a field is absent.
using ParamList = std::vector<std::optional<Tensor>>;

float* sinv_ptr(const std::optional<Tensor>& sinv, DType d, const Tensor& ref, const std::string& what) {
  if (!mfp8::is_scaled(d)) return nullptr;
  TORCH_CHECK(sinv.has_value(), "adamw_step: ", what, " is stored in a scaled dtype and needs its scale_inv");
  check_scalar(*sinv, ref, what.c_str());
  return sinv->data_ptr<float>();
}

mfp8::AdamWParam to_param(const ParamList& f, size_t k) {
  const std::string idx = "tensors[" + std::to_string(k) + "].";
  TORCH_CHECK(f.size() == 10, "adamw_step: ", idx, " needs 10 fields, got ", f.size());
  const char* names[4] = {"master", "grad", "exp_avg", "exp_avg_sq"};
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK(f[i].has_value(), "adamw_step: ", idx, names[i], " is missing");
    check_dense(*f[i], (idx + names[i]).c_str());
    check_same_device(*f[i], *f[0], (idx + names[i]).c_str());
    TORCH_CHECK(f[i]->numel() == f[0]->numel(), "adamw_step: ", idx, names[i], " has ", f[i]->numel(),
                " elements, master has ", f[0]->numel());
  }
  const Tensor& master = *f[0];
  mfp8::AdamWParam p{};
  p.n = master.numel();
  p.master = master.data_ptr();
  p.master_dtype = to_dtype(master.scalar_type(), "master");
  p.master_sinv = sinv_ptr(f[4], p.master_dtype, master, idx + "master_sinv");
  p.grad = f[1]->data_ptr();
  p.grad_dtype = to_dtype(f[1]->scalar_type(), "grad");
  p.grad_sinv = sinv_ptr(f[5], p.grad_dtype, master, idx + "grad_sinv");
  p.exp_avg = f[2]->data_ptr();
  p.exp_avg_dtype = to_dtype(f[2]->scalar_type(), "exp_avg");
  p.exp_avg_sinv = sinv_ptr(f[6], p.exp_avg_dtype, master, idx + "exp_avg_sinv");
  p.exp_avg_sq = f[3]->data_ptr();
  p.exp_avg_sq_dtype = to_dtype(f[3]->scalar_type(), "exp_avg_sq");
  p.exp_avg_sq_sinv = sinv_ptr(f[7], p.exp_avg_sq_dtype, master, idx + "exp_avg_sq_sinv");
  p.weight = nullptr;
  p.weight_dtype = DType::F32;
  p.weight_sinv = nullptr;
  if (f[8].has_value()) {
    const Tensor& w = *f[8];
    check_dense(w, (idx + "weight").c_str());
    check_same_device(w, master, (idx + "weight").c_str());
    TORCH_CHECK(w.numel() == p.n, "adamw_step: ", idx, "weight has ", w.numel(), " elements, master has ", p.n);
    p.weight = w.data_ptr();
    p.weight_dtype = to_dtype(w.scalar_type(), "weight");
    p.weight_sinv = sinv_ptr(f[9], p.weight_dtype, master, idx + "weight_sinv");
  }
  return p;
}

// consts: AdamWHyper.constants() in the order of mfp8::AdamWConsts. sr_seeds: empty, or one per tensor:
// -1 stores that master rounded to nearest, a seed in [0, 2^32) with stochastic rounding (F16/BF16 only).
void adamw_step(const std::vector<ParamList>& tensors, const std::vector<double>& consts, int64_t margin,
                const std::vector<int64_t>& sr_seeds) {
  TORCH_CHECK(consts.size() == 9, "adamw_step: expected 9 constants, got ", consts.size());
  TORCH_CHECK(sr_seeds.empty() || sr_seeds.size() == tensors.size(), "adamw_step: ", sr_seeds.size(),
              " sr_seeds for ", tensors.size(), " tensors");
  if (tensors.empty()) return;
  std::vector<mfp8::AdamWParam> params;
  params.reserve(tensors.size());
  for (size_t k = 0; k < tensors.size(); ++k) {
    mfp8::AdamWParam p = to_param(tensors[k], k);
    const int64_t seed = sr_seeds.empty() ? -1 : sr_seeds[k];
    TORCH_CHECK(seed >= -1 && seed <= 0xFFFFFFFFll, "adamw_step: sr_seeds[", k, "] = ", seed, " is out of range");
    if (seed >= 0) {
      TORCH_CHECK(p.master_dtype == DType::F16 || p.master_dtype == DType::BF16, "adamw_step: tensors[", k,
                  "]: stochastic rounding needs a float16 or bfloat16 master, got ", tensors[k][0]->scalar_type());
      p.master_sr = 1;
      p.master_sr_seed = static_cast<uint32_t>(seed);
    }
    params.push_back(p);
  }
  const Tensor& first = *tensors[0][0];
  for (size_t k = 1; k < tensors.size(); ++k)
    check_same_device(*tensors[k][0], first, ("tensors[" + std::to_string(k) + "].master").c_str());
  const mfp8::AdamWConsts c{static_cast<float>(consts[0]), static_cast<float>(consts[1]),
                            static_cast<float>(consts[2]), static_cast<float>(consts[3]),
                            static_cast<float>(consts[4]), static_cast<float>(consts[5]),
                            static_cast<float>(consts[6]), static_cast<float>(consts[7]),
                            static_cast<float>(consts[8])};
  if (on_cuda(first)) {
#if defined(MFP8_WITH_CUDA)
    MFP8_CUDA_GUARD(first);
    Tensor ws = torch::empty({mfp8::kAdamWWorkspacePerParam * static_cast<int64_t>(params.size())},
                             first.options().dtype(at::kFloat));
    check_launch(mfp8::adamw_step_cuda(params.data(), static_cast<int64_t>(params.size()), c,
                                       static_cast<int>(margin), ws.data_ptr<float>(), stream_of(first)));
#endif
  } else {
    sync_threads();
    const py::gil_scoped_release no_gil;  // other Python threads (data loading) run meanwhile
    mfp8::adamw_step_cpu(params.data(), static_cast<int64_t>(params.size()), c, static_cast<int>(margin));
  }
}

#if !defined(MFP8_SOURCE_HASH)
#define MFP8_SOURCE_HASH 0
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::module_::import("torch");  // registers the Tensor type before any function is called
  m.doc() = "megatron_fp8 csrc kernels (see megatron_fp8/fp8/reference.py for the semantics)";
  m.def("scale_cast_amax", &scale_cast_amax, py::arg("x"), py::arg("scale"), py::arg("out_dtype"));
  m.def("amax", &amax, py::arg("x"));
  m.def("cast_transpose_amax", &cast_transpose_amax, py::arg("x"), py::arg("scale"), py::arg("out_dtype"));
  m.def("fp8_accumulate", &fp8_accumulate, py::arg("acc"), py::arg("acc_scale_inv"), py::arg("grad"),
        py::arg("margin") = 0);
  m.def("sum_shards", &sum_shards, py::arg("shards"), py::arg("scale_invs"), py::arg("out_dtype"),
        py::arg("factor") = 1.0, py::arg("margin") = 0, py::arg("prev_scale_inv") = py::none());
  m.def("fp8_gemm", &fp8_gemm, py::arg("a"), py::arg("b"), py::arg("scale_a"), py::arg("scale_b"),
        py::arg("scaling"), py::arg("out_dtype"), py::arg("a_transposed") = false, py::arg("b_transposed") = false,
        py::arg("blocks_per_thread") = 2, py::arg("dot") = "auto");
  m.def("bf16_dot_available", &mfp8::bf16_dot_available,
        "whether fp8_gemm can run its blocks on BF16 dot-product units (AVX-512-BF16)");
  m.def("adamw_step", &adamw_step, py::arg("tensors"), py::arg("consts"), py::arg("margin"),
        py::arg("sr_seeds") = std::vector<int64_t>{},
        "tensors: one 10-field list per parameter (AdamWTensors order); consts: AdamWHyper.constants(); "
        "sr_seeds: per tensor, -1 or the seed of its master's stochastic rounding");
#if defined(MFP8_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("source_hash") = static_cast<unsigned long long>(MFP8_SOURCE_HASH);
}
