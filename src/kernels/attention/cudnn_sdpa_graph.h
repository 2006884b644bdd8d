// The cuDNN backend-graph pieces of the fused attention path (cudnn_attention.cc): descriptors
// with labelled errors, the tensor uids bound at execution, and the builders of the forward and
// backward SDPA graphs (their patterns are described at the top of cudnn_attention.cc).
// Internal to src/kernels/attention; CUDA builds with cuDNN only.
#pragma once

#ifdef FRUGAL_HAVE_CUDNN

#include <cuda_bf16.h>
#include <cudnn.h>

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "kernels/attention/flash_attention_launch.h"

namespace frugal::cuda::cudnn_sdpa {

using Dims = std::array<int64_t, 4>;
using bf16 = __nv_bfloat16;

// A failed cuDNN step: which descriptor or call, cuDNN's status and its own last message.
struct CudnnFailure {
  std::string message;
};

inline std::string describe(cudnnStatus_t status) {
  std::string text = std::string(cudnnGetErrorString(status)) + " (" +
                     std::to_string(static_cast<int>(status)) + ")";
  char detail[1024] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  if (detail[0] != '\0') text += ": " + std::string(detail);
  return text;
}

inline void check(cudnnStatus_t status, const std::string& step) {
  if (status != CUDNN_STATUS_SUCCESS) throw CudnnFailure{step + " failed: " + describe(status)};
}

// One backend descriptor (destroyed with the object), labelled for error messages.
class Descriptor {
 public:
  Descriptor(cudnnBackendDescriptorType_t type, std::string label) : label_(std::move(label)) {
    check(cudnnBackendCreateDescriptor(type, &descriptor_), "create " + label_);
  }
  ~Descriptor() {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  Descriptor(Descriptor&& other) noexcept
      : descriptor_(std::exchange(other.descriptor_, nullptr)), label_(std::move(other.label_)) {}
  Descriptor& operator=(Descriptor&&) = delete;

  cudnnBackendDescriptor_t get() const { return descriptor_; }
  const std::string& label() const { return label_; }
  void set(cudnnBackendAttributeName_t name, const char* name_text,
           cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    check(cudnnBackendSetAttribute(descriptor_, name, type, count, values),
          label_ + ": set " + name_text);
  }
  void finalize() { check(cudnnBackendFinalize(descriptor_), label_ + ": finalize"); }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
  std::string label_;
};

#define FRUGAL_CUDNN_SET(descriptor, name, type, count, values) \
  (descriptor).set(name, #name, type, count, values)

// Unique ids of the tensors the caller binds in the variant pack; virtual tensors count up from
// kFirstVirtualUid.
enum Uid : int64_t {
  kUidQ = 1,
  kUidK,
  kUidV,
  kUidOut,
  kUidLse,
  kUidDout,
  kUidDq,
  kUidDk,
  kUidDv,
  kUidRowSums,   // backward: sum_c dout * out, fp32 [b, h, s, 1] (scratch)
  kUidDqAccum,   // backward: fp32 dq accumulator [b, h, s, dqk] (scratch)
  kUidScale,     // by value
  kUidMaskValue, // by value: the lowest float, for masked scores
  kUidOne,       // by value: 1
  kFirstVirtualUid = 100,
};

// A finalized execution plan and every descriptor it was built from (kept alive with it).
struct Plan {
  std::deque<Descriptor> descriptors;
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace_bytes = 0;
};

// "B.. S.. H.. qk .. v .." of a shape, for messages.
inline std::string shape_text(const flash::AttentionShape& shape) {
  return "B" + std::to_string(shape.batch) + " S" + std::to_string(shape.seq) + " H" +
         std::to_string(shape.heads) + " qk " + std::to_string(shape.qk_dim) + " v " +
         std::to_string(shape.v_dim);
}

// The finalized plans of one shape (a CudnnFailure names the descriptor cuDNN refused).
std::unique_ptr<Plan> build_forward(cudnnHandle_t handle, const flash::AttentionShape& shape);
std::unique_ptr<Plan> build_backward(cudnnHandle_t handle, const flash::AttentionShape& shape);

}  // namespace frugal::cuda::cudnn_sdpa

#endif  // FRUGAL_HAVE_CUDNN
