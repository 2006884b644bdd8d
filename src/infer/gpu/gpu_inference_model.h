// The generation model (infer/generation_model.h) on one GPU: the math of the CPU reference
// InferenceModel (infer/inference_model.h: absorbed MLA over the paged latent cache, dense FFN or
// MoE, MTP depth 1), with
//   - weights on the device in BF16, or (weights = Fp8) every Linear of the blocks (attention
//     projections, dense and expert FFNs) as FP8 E4M3 with 128x128 block scales run as
//     block-scaled FP8 GEMMs on 1x128-quantized activations (the V3 inference recipe, spec §4 /
//     §10); embedding, router (fp32), latent norms, lm_head and the absorbed kv_b products stay
//     BF16/FP32;
//   - the latent cache as device BF16 in PagedLatentCache's [page][layer][slot][entry] layout,
//     attached to the PagedLatentCache that make_cache() returns;
//   - attention by cuda::mla_decode_attention (kernels/attention/mla_decode_cuda.h) for every row,
//     prefill rows included;
//   - MoE by the training kernels (router, permutation, grouped expert GEMMs, combine).
// Residual stream and norms' statistics in fp32; logits returned as fp32 on the host.
// Results equal the CPU reference up to BF16/FP8 rounding (tests/infer/test_gpu_inference_cuda.cc).
//
// Weights come from a WeightSource, one tensor at a time (host fp32, Hugging Face names and
// shapes as in ParamStore), so a model far larger than host memory in fp32 can be loaded, and a
// benchmark can fill random weights without ever building a Transformer<float>.
//
// Not thread-safe: one forward at a time, on ctx.stream. Only in builds with FRUGAL_HAVE_CUDA.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/device_context.h"
#include "infer/generation_model.h"
#include "model/config.h"
#include "model/transformer.h"

namespace frugal::infer {

enum class DecodeWeights { Bf16, Fp8 };
// "bf16" / "fp8"; anything else is an error naming the value.
DecodeWeights parse_decode_weights(const std::string& text);
const char* decode_weights_name(DecodeWeights weights);

// Fills `out` (the tensor's element count, row-major, fp32) with tensor `name` of `shape`.
using WeightSource =
    std::function<void(const std::string& name, const std::vector<int64_t>& shape,
                       std::span<float> out)>;
// Reads from a CPU model (which must outlive the loading, not the GpuInferenceModel).
WeightSource weights_of(const Transformer<float>& model);
// Random weights for benchmarks: N(0, std) matrices, ones for norm weights, zeros for the routing
// bias; deterministic in (seed, name).
WeightSource random_weights(uint64_t seed, double std);

struct GpuInferenceOptions {
  DecodeWeights weights = DecodeWeights::Bf16;
};

class GpuInferenceModel final : public GenerationModel {
 public:
  // Loads every parameter of `cfg` (the same names as Transformer<float>) from `source`.
  // `ctx` must outlive the model. Throws frugal::Error naming the problem (e.g. FP8 weights on a
  // GPU below sm_89, or dims FP8 GEMMs cannot take: then use bf16).
  GpuInferenceModel(cuda::DeviceContext& ctx, const ModelConfig& cfg, const WeightSource& source,
                    GpuInferenceOptions options = {});
  ~GpuInferenceModel() override;

  const ModelConfig& config() const override;
  std::string describe() const override;  // e.g. "cuda:0 NVIDIA H200 (sm_90), fp8 weights"
  PagedLatentCache make_cache(bool mtp, int64_t page_size, int64_t num_pages) const override;
  void forward(const Rows& rows, PagedLatentCache& cache, const std::vector<int64_t>& logit_rows,
               std::vector<float>* logits, std::vector<float>* hidden) const override;
  void forward_mtp(const Rows& rows, const float* hidden, PagedLatentCache& cache,
                   const std::vector<int64_t>& logit_rows,
                   std::vector<float>* logits) const override;

  // Device bytes held by the weights (for the benchmark table).
  size_t weight_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal::infer
