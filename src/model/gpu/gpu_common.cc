// ParamRegistry and the precision rules of the GPU model (see gpu_common.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_common.h"

#include "core/cuda_check.h"
#include "core/error.h"
#include "io/hf_layout.h"
#include "kernels/quant/quant.h"

namespace frugal::gpu {

const char* precision_name(GemmPrecision precision) {
  switch (precision) {
    case GemmPrecision::Fp32:
      return "fp32";
    case GemmPrecision::Bf16:
      return "bf16";
    case GemmPrecision::Fp8:
      return "fp8";
  }
  return "?";
}

GemmPrecision block_linear_precision(Recipe recipe, int64_t in, int64_t out) {
  switch (recipe) {
    case Recipe::Fp32:
      return GemmPrecision::Fp32;
    case Recipe::Bf16:
      return GemmPrecision::Bf16;
    case Recipe::Fp8:
      return in % kFp8BlockSize == 0 && out % kFp8BlockSize == 0 ? GemmPrecision::Fp8
                                                                 : GemmPrecision::Bf16;
  }
  return GemmPrecision::Fp32;
}

GemmPrecision dense_precision(Recipe recipe) {
  return recipe == Recipe::Fp32 ? GemmPrecision::Fp32 : GemmPrecision::Bf16;
}

void zero_async(cuda::DeviceContext& ctx, void* data, size_t bytes) {
  if (bytes > 0) FRUGAL_CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, ctx.stream));
}

template <class T>
void* PinnedArray<T>::pinned_allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* pointer = nullptr;
  FRUGAL_CUDA_CHECK(cudaMallocHost(&pointer, bytes));
  return pointer;
}

template <class T>
void PinnedArray<T>::pinned_free(void* pointer) noexcept {
  if (pointer != nullptr) cudaFreeHost(pointer);
}

template class PinnedArray<int32_t>;
template class PinnedArray<int64_t>;
template class PinnedArray<uint8_t>;

ParamRegistry::Storage ParamRegistry::allocate(int64_t count, bool trainable) {
  FRUGAL_CHECK(count > 0, "ParamRegistry: parameter storage of {} elements", count);
  Storage storage;
  storage.count = count;
  arrays_.emplace_back(*ctx_, count);
  storage.value = arrays_.back().data();
  zero_async(*ctx_, storage.value, arrays_.back().bytes());
  if (trainable) {
    arrays_.emplace_back(*ctx_, count);
    storage.grad = arrays_.back().data();
    zero_async(*ctx_, storage.grad, arrays_.back().bytes());
  }
  storages_.push_back(storage);
  storage_copies_.push_back(nullptr);
  return storage;
}

void ParamRegistry::attach_copies(const float* storage_value,
                                  std::shared_ptr<WeightCopyState> copies) {
  for (size_t i = 0; i < storages_.size(); ++i) {
    const Storage& s = storages_[i];
    if (s.value != storage_value) continue;
    storage_copies_[i] = copies;
    for (DeviceParam& p : params_)
      if (p.value >= s.value && p.value < s.value + s.count) p.copies = copies;
    return;
  }
  fail("ParamRegistry: no storage starts at the weight whose copies are attached");
}

void ParamRegistry::upload_values(const ParamStore<float>& host, const std::string& who) {
  for (DeviceParam& p : params_) {
    const Param<float>* h = const_cast<ParamStore<float>&>(host).find(p.name);
    FRUGAL_CHECK(h != nullptr, "{}: the host model has no tensor {}", who, p.name);
    FRUGAL_CHECK(h->shape == p.shape, "{}: {} has shape {} on the host, {} here", who, p.name,
                 shape_text(h->shape), shape_text(p.shape));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(p.value, h->value.data(),
                                      static_cast<size_t>(p.count) * sizeof(float),
                                      cudaMemcpyHostToDevice, ctx_->stream));
  }
}

void ParamRegistry::add(const std::string& name, std::vector<int64_t> shape, ParamKind kind,
                        float* value, float* grad) {
  FRUGAL_CHECK(!index_.contains(name), "ParamRegistry: duplicate parameter name {}", name);
  DeviceParam p;
  p.name = name;
  p.count = 1;
  for (int64_t d : shape) p.count *= d;
  p.shape = std::move(shape);
  p.kind = kind;
  p.trainable = kind != ParamKind::Buffer;
  p.weight_decay = kind == ParamKind::Matrix;
  p.value = value;
  p.grad = p.trainable ? grad : nullptr;
  FRUGAL_CHECK(value != nullptr && (!p.trainable || grad != nullptr),
               "ParamRegistry: {} has no device storage", name);
  for (size_t i = 0; i < storages_.size(); ++i)
    if (value >= storages_[i].value && value < storages_[i].value + storages_[i].count)
      p.copies = storage_copies_[i];
  index_.emplace(name, params_.size());
  params_.push_back(std::move(p));
}

const DeviceParam* ParamRegistry::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

void ParamRegistry::zero_grad() {
  for (const Storage& s : storages_)
    if (s.grad != nullptr) zero_async(*ctx_, s.grad, static_cast<size_t>(s.count) * sizeof(float));
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
