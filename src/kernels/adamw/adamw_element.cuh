// Device side of one AdamW element update, shared by every optimizer kernel (adamw_cuda.cu: the
// per-tensor and multi-tensor updates; adamw_fp8_cuda.cu: the update fused with the FP8 weight
// quantization), so that all of them compute the same expressions with the same roundings and give
// bit-identical weights and moments. The rule (see adamw_cuda.h) in double with explicit
// round-to-nearest intrinsics (never contracted into fused multiply-adds):
//   g = grad * clip;  m = beta1*m + (1-beta1)*g;  v = beta2*v + ((1-beta2)*g)*g   (then stored as M)
//   m_hat = m / (1-beta1^t);  v_hat = v / (1-beta2^t)      (from the stored, rounded m and v)
//   w = (w - decay*w) - (lr*m_hat) / (sqrt(v_hat) + eps),  decay = lr * weight_decay  (fp32)
// Only for .cu files (nvcc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "kernels/adamw/adamw_cuda.h"

// FRUGAL_CUDA_REQUIRE with a message (a std::string expression) built only when the check fails.
#define ADAMW_REQUIRE(condition, message)                                                     \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      const std::string adamw_message_ = (message);                                          \
      ::frugal::cuda::throw_requirement(adamw_message_.c_str(), #condition, __FILE__, __LINE__); \
    }                                                                                         \
  } while (0)

namespace frugal::cuda::detail {

inline std::string text(int64_t value) { return std::to_string(value); }

// Bytes of a launch's segment table of `count` records: the records, then the prefix of work
// units per segment (int64 [count + 1]).
template <class Record>
size_t segment_table_bytes(int64_t count, const char* who) {
  ADAMW_REQUIRE(count >= 0, std::string(who) + ": negative segment count");
  return static_cast<size_t>(count) * sizeof(Record) +
         static_cast<size_t>(count + 1) * sizeof(int64_t);
}

// Copies a launch's segment table into its device memory: the records, then the prefix of work
// units per segment (int64 [segments + 1]), and waits (the host vectors may go out of scope).
// `who` names the preparing function in errors.
template <class Record>
void upload_segment_table(void* table_memory, size_t table_bytes,
                          const std::vector<Record>& records, const std::vector<int64_t>& prefix,
                          cudaStream_t stream, const char* who) {
  const size_t record_bytes = records.size() * sizeof(Record);
  const size_t prefix_bytes = prefix.size() * sizeof(int64_t);
  ADAMW_REQUIRE(table_memory != nullptr && reinterpret_cast<uintptr_t>(table_memory) % 16 == 0,
                std::string(who) + ": needs 16-byte aligned table memory");
  ADAMW_REQUIRE(table_bytes >= record_bytes + prefix_bytes,
                std::string(who) + ": table memory of " +
                    text(static_cast<int64_t>(table_bytes)) + " bytes, " +
                    text(static_cast<int64_t>(record_bytes + prefix_bytes)) + " needed");
  auto* base = static_cast<unsigned char*>(table_memory);
  FRUGAL_CUDA_CHECK(
      cudaMemcpyAsync(base, records.data(), record_bytes, cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(base + record_bytes, prefix.data(), prefix_bytes,
                                    cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

struct AdamWConstants {
  double beta1, one_minus_beta1, beta2, one_minus_beta2;
  double bias_correction1, bias_correction2;
  double lr, decay, eps;  // decay = lr * step.weight_decay (the table kernels form it per segment)
};

// The per-step constants from `step` (checked; `who` names the launcher in errors). The bias
// corrections use std::pow in double on the host, as the CPU AdamW does.
inline AdamWConstants adamw_constants(const AdamWStep& step, const char* who) {
  if (!(step.step >= 1)) {
    const std::string message = std::string("cuda::") + who + ": step is 1-based";
    throw_requirement(message.c_str(), "step.step >= 1", __FILE__, __LINE__);
  }
  if (!(step.beta1 >= 0.0f && step.beta1 < 1.0f && step.beta2 >= 0.0f && step.beta2 < 1.0f &&
        step.eps > 0.0f)) {
    const std::string message =
        std::string("cuda::") + who + ": needs beta1, beta2 in [0, 1) and eps > 0";
    throw_requirement(message.c_str(), "beta1, beta2 in [0, 1), eps > 0", __FILE__, __LINE__);
  }
  AdamWConstants c{};
  c.beta1 = step.beta1;
  c.one_minus_beta1 = 1.0 - c.beta1;
  c.beta2 = step.beta2;
  c.one_minus_beta2 = 1.0 - c.beta2;
  c.bias_correction1 = 1.0 - std::pow(c.beta1, static_cast<double>(step.step));
  c.bias_correction2 = 1.0 - std::pow(c.beta2, static_cast<double>(step.step));
  c.lr = step.lr;
  c.decay = c.lr * static_cast<double>(step.weight_decay);
  c.eps = step.eps;
  return c;
}

// The moment as stored in M, returned as the (exact) fp32 value of the stored M.
template <class M>
__device__ __forceinline__ float round_moment(double value);
template <>
__device__ __forceinline__ float round_moment<float>(double value) {
  return __double2float_rn(value);
}
template <>
__device__ __forceinline__ float round_moment<__nv_bfloat16>(double value) {
  return __bfloat162float(__double2bfloat16(value));  // one rounding (cvt.rn.bf16.f64)
}

// One element: w, m, v (m, v holding the fp32 values of the stored M) updated in place from the
// raw gradient `grad`. clip_d: the clip scale widened; decay: lr * weight_decay in double.
template <class M>
__device__ __forceinline__ void adamw_element(float& w, float& m, float& v, float grad,
                                              double clip_d, const AdamWConstants& c,
                                              double decay) {
  const double g = __dmul_rn(static_cast<double>(grad), clip_d);
  m = round_moment<M>(__dadd_rn(__dmul_rn(c.beta1, m), __dmul_rn(c.one_minus_beta1, g)));
  v = round_moment<M>(
      __dadd_rn(__dmul_rn(c.beta2, v), __dmul_rn(__dmul_rn(c.one_minus_beta2, g), g)));
  const double m_hat = __ddiv_rn(static_cast<double>(m), c.bias_correction1);
  const double v_hat = __ddiv_rn(static_cast<double>(v), c.bias_correction2);
  const double p = w;
  const double step = __ddiv_rn(__dmul_rn(c.lr, m_hat), __dadd_rn(__dsqrt_rn(v_hat), c.eps));
  w = __double2float_rn(__dsub_rn(__dsub_rn(p, __dmul_rn(decay, p)), step));
}

}  // namespace frugal::cuda::detail
