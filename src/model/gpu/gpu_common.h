// Shared pieces of the GPU model modules (src/model/gpu/*):
//   - the activation type T of a recipe (float for fp32, __nv_bfloat16 for bf16/fp8) and the
//     cuBLASLt DataType of an element type;
//   - GemmPrecision: how one weight's GEMMs run, decided by the recipe (model code asks for "a
//     linear layer", the recipe picks fp32, bf16 or fp8);
//   - ParamRegistry: the device parameters in the CPU ParamStore's order, with their fp32 master
//     storage and gradients (a module may register several parameters inside one storage array,
//     e.g. gate_proj and up_proj stacked for one fused GEMM, or all experts of an MoE layer);
//   - AsType: an fp32 array seen as T (an alias for float, a rounded copy for bf16).
// CUDA builds only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/device_context.h"
#include "core/param.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/gemm/gemm_cuda.h"
#include "model/gpu/gpu_transformer.h"

namespace frugal::gpu {

using bf16 = __nv_bfloat16;

template <class T>
constexpr cuda::DataType data_type_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "float or __nv_bfloat16");
  return std::is_same_v<T, float> ? cuda::DataType::F32 : cuda::DataType::BF16;
}

enum class GemmPrecision { Fp32, Bf16, Fp8 };
const char* precision_name(GemmPrecision precision);

// FP8 scales are amax/448 exactly (not rounded up to a power of two) for weights and activations.
constexpr bool kFp8PowerOfTwoScales = false;

// A Linear inside a decoder block: fp32 under the fp32 recipe, bf16 under bf16, fp8 under fp8
// when both dims are multiples of 128 (the FP8 GEMMs' tile; otherwise bf16, e.g. V3's
// kv_a_proj_with_mqa with 576 outputs).
GemmPrecision block_linear_precision(Recipe recipe, int64_t in, int64_t out);
// The output head and MTP's eh_proj stay out of FP8 (spec §4.3): fp32 or bf16.
GemmPrecision dense_precision(Recipe recipe);

constexpr int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

class ParamRegistry {
 public:
  explicit ParamRegistry(cuda::DeviceContext& ctx) : ctx_(&ctx) {}
  ParamRegistry(const ParamRegistry&) = delete;
  ParamRegistry& operator=(const ParamRegistry&) = delete;

  struct Storage {
    float* value = nullptr;  // [count], zeroed
    float* grad = nullptr;   // [count], zeroed; null when not trainable
    int64_t count = 0;
  };
  // Persistent device storage for `count` fp32 master values (and their gradient).
  Storage allocate(int64_t count, bool trainable);
  // Marks the storage starting at `storage_value` as the master of a bf16 / fp8 weight whose
  // copies are `copies`: every parameter inside it, added before or after, gets them
  // (DeviceParam::copies).
  void attach_copies(const float* storage_value, std::shared_ptr<WeightCopyState> copies);
  // Appends a parameter viewing `value`/`grad` (inside some allocated storage).
  void add(const std::string& name, std::vector<int64_t> shape, ParamKind kind, float* value,
           float* grad);
  // The parameter registered under `name` (its value/grad pointers view its storage), or null.
  // The pointer is valid until the next add.
  const DeviceParam* find(const std::string& name) const;

  cuda::DeviceContext& context() { return *ctx_; }
  std::vector<DeviceParam>& params() { return params_; }
  const std::vector<DeviceParam>& params() const { return params_; }
  void zero_grad();
  // Copies every parameter's master values from the host store's tensor of the same name (shapes
  // checked; the store may hold more, e.g. the whole model for a pipeline stage or an EP slice),
  // on the context's stream, without waiting. `who` names the caller in errors.
  void upload_values(const ParamStore<float>& host, const std::string& who);

 private:
  cuda::DeviceContext* ctx_;
  std::vector<cuda::DeviceArray<float>> arrays_;
  std::vector<Storage> storages_;
  std::vector<std::shared_ptr<WeightCopyState>> storage_copies_;  // per storage, or null
  std::vector<DeviceParam> params_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in params_
};

// An fp32 device array seen as T: the same pointer for float, a rounded copy for bf16.
template <class T>
class AsType {
 public:
  AsType(cuda::DeviceContext& ctx, const float* x, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      pointer_ = x;
    } else {
      copy_ = cuda::DeviceArray<T>(ctx, n);
      cuda::cast<float, T>(copy_.data(), x, n, ctx.stream);
      pointer_ = copy_.data();
    }
  }
  const T* get() const { return pointer_; }

 private:
  cuda::DeviceArray<T> copy_;
  const T* pointer_ = nullptr;
};

// A T device array seen as fp32: the same pointer for float, a widened copy for bf16.
template <class T>
class AsFloat {
 public:
  AsFloat(cuda::DeviceContext& ctx, const T* x, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      pointer_ = x;
    } else {
      copy_ = cuda::DeviceArray<float>(ctx, n);
      cuda::cast<T, float>(copy_.data(), x, n, ctx.stream);
      pointer_ = copy_.data();
    }
  }
  const float* get() const { return pointer_; }

 private:
  cuda::DeviceArray<float> copy_;
  const float* pointer_ = nullptr;
};

// Page-locked host memory (cudaMallocHost): the staging area of the step's few host<->device
// copies (tokens in, expert offsets and losses out), so they run asynchronously on the stream.
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  explicit PinnedArray(int64_t count) : count_(count) {
    data_ = static_cast<T*>(pinned_allocate(bytes()));
  }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  PinnedArray(PinnedArray&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  PinnedArray& operator=(PinnedArray&& o) noexcept {
    if (this != &o) {
      pinned_free(data_);
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  ~PinnedArray() { pinned_free(data_); }
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return count_; }
  size_t bytes() const { return static_cast<size_t>(count_) * sizeof(T); }

 private:
  static void* pinned_allocate(size_t bytes);
  static void pinned_free(void* pointer) noexcept;
  T* data_ = nullptr;
  int64_t count_ = 0;
};

// Zeroes `bytes` bytes of device memory on the context's stream.
void zero_async(cuda::DeviceContext& ctx, void* data, size_t bytes);

}  // namespace frugal::gpu
