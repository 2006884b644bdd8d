// GpuInferenceModel (see gpu_inference_model.h): the CPU reference's forward (inference_model.cc)
// on one GPU. Per forward over N rows:
//   upload tokens, positions, row -> batch sequence, lengths (= position + 1), the page tables of
//   the batch's sequences [sequences, max_pages] and the logit rows (one host -> device copy);
//   x = embed(tokens)                                                    [N, hidden] fp32
//   per layer: x += o_proj(absorbed MLA(norm(x)));  x += FFN(norm(x))    (fp32 residual stream)
//   logits = lm_head(norm(x))[logit rows] -> host fp32; hidden = norm(x) -> host fp32.
// Activations feeding GEMMs are BF16 (or FP8 1x128 tiles quantized from them); GEMM outputs that
// feed norms or the residual stream are fp32. The only host syncs: one copy of the expert row
// offsets per MoE layer (the grouped GEMMs need them on the host) and the final copies out.
#ifdef FRUGAL_HAVE_CUDA

#include "infer/gpu/gpu_inference_model.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "infer/gpu/gpu_inference_kernels.cuh"
#include "io/hf_layout.h"
#include "kernels/attention/mla_decode_cuda.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/embedding/embedding_cuda.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/rmsnorm/rmsnorm.h"
#include "kernels/rope/rope.h"
#include "kernels/rope/rope_cuda.h"
#include "kernels/swiglu/swiglu.h"
#include "model/moe.h"

namespace frugal::infer {

DecodeWeights parse_decode_weights(const std::string& text) {
  if (text == "bf16") return DecodeWeights::Bf16;
  if (text == "fp8") return DecodeWeights::Fp8;
  fail("unknown decode weights '{}' (expected bf16 or fp8)", text);
}

const char* decode_weights_name(DecodeWeights weights) {
  return weights == DecodeWeights::Fp8 ? "fp8" : "bf16";
}

WeightSource weights_of(const Transformer<float>& model) {
  return [&model](const std::string& name, const std::vector<int64_t>& shape,
                  std::span<float> out) {
    const Param<float>& p = model.params().get(name);
    FRUGAL_CHECK(p.numel() == static_cast<int64_t>(out.size()) && p.shape == shape,
                 "weights_of: tensor {} has shape {}, expected {}", name, shape_text(p.shape),
                 shape_text(shape));
    std::copy(p.value.begin(), p.value.end(), out.begin());
  };
}

WeightSource random_weights(uint64_t seed, double std) {
  return [seed, std](const std::string& name, const std::vector<int64_t>&, std::span<float> out) {
    const bool bias = name.find("e_score_correction_bias") != std::string::npos;
    const bool norm = name.find("norm") != std::string::npos;
    if (bias) {
      std::fill(out.begin(), out.end(), 0.0f);
    } else if (norm) {
      std::fill(out.begin(), out.end(), 1.0f);
    } else {
      const RandomStream rng(seed, hash_name(name));
      const int64_t count = static_cast<int64_t>(out.size());
      // Counter-based: element i depends only on (seed, name, i), so threads change nothing.
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < count; ++i)
        out[static_cast<size_t>(i)] = static_cast<float>(std * rng.normal(static_cast<uint64_t>(i)));
    }
  };
}

namespace {

using bf16 = __nv_bfloat16;
using cuda::DataType;
using cuda::DeviceArray;

// FP8 scales amax/448 exactly, as the training recipe (gpu_common.h kFp8PowerOfTwoScales).
constexpr bool kPowerOfTwoScales = false;
// cuBLASLt's 1x128-scaled FP8 operand needs M a multiple of 8; rows are padded to 16 with zeros.
constexpr int64_t kFp8RowMultiple = 16;

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

size_t type_bytes(DataType type) { return type == DataType::F32 ? 4 : 2; }

// `groups` stacked Linears [groups][out][in]: BF16, or FP8 E4M3 codes with 128x128 block scales
// [groups][out/128][in/128].
struct Matrix {
  int64_t groups = 0, out = 0, in = 0;
  bool fp8 = false;
  DeviceArray<bf16> w;
  DeviceArray<uint8_t> q;
  DeviceArray<float> scales;
  size_t bytes() const { return w.bytes() + q.bytes() + scales.bytes(); }
};

// Dense SwiGLU FFN (groups = 1) or all routed experts of a layer (groups = E):
// gate_up [groups][2*inter][hidden] (gate rows, then up rows), down [groups][hidden][inter].
struct Ffn {
  Matrix gate_up, down;
  int64_t inter = 0;
  size_t bytes() const { return gate_up.bytes() + down.bytes(); }
};

struct Layer {
  DeviceArray<float> input_norm, post_norm, q_a_norm, kv_a_norm;  // [hidden] / [q_lora] / [kv_lora]
  Matrix q_a, q_b;       // q_lora_rank > 0
  Matrix q;              // q_lora_rank = 0
  Matrix kv_a, kv_b, o;  // kv_b always BF16 (the absorbed products)
  bool moe = false;
  Ffn dense;
  DeviceArray<float> router;  // [E, hidden] fp32
  DeviceArray<float> bias;    // [E] (noaux_tc) or empty
  Ffn experts;
  Ffn shared;                 // inter 0 without shared experts
  size_t bytes() const {
    return input_norm.bytes() + post_norm.bytes() + q_a_norm.bytes() + kv_a_norm.bytes() +
           q_a.bytes() + q_b.bytes() + q.bytes() + kv_a.bytes() + kv_b.bytes() + o.bytes() +
           dense.bytes() + router.bytes() + bias.bytes() + experts.bytes() + shared.bytes();
  }
};

// The device copies of one forward's row metadata (all int32).
struct RowData {
  DeviceArray<int32_t> buffer;
  const int32_t *tokens = nullptr, *positions = nullptr, *row_sequence = nullptr,
                *lengths = nullptr, *page_table = nullptr, *logit_rows = nullptr;
  int64_t rows = 0, max_pages = 0, max_length = 0, logit_count = 0;
};

}  // namespace

struct GpuInferenceModel::Impl {
  cuda::DeviceContext& ctx;
  ModelConfig cfg;
  GpuInferenceOptions options;
  cpu::RouterParams router;
  double softmax_scale = 1.0;
  DeviceArray<float> embed;  // [vocab, hidden] fp32
  DeviceArray<float> final_norm;
  Matrix lm_head;            // BF16 [vocab, hidden]
  std::vector<Layer> layers;
  // MTP depth 1.
  DeviceArray<float> enorm, hnorm, mtp_norm;
  Matrix eh_proj;            // BF16 [hidden, 2*hidden]
  Layer mtp_layer;
  // RoPE table on the device, fp32 [rope_positions, rope/2]; grows on demand.
  DeviceArray<float> rope_cos, rope_sin;
  int64_t rope_positions = 0;
  std::string device_name;

  Impl(cuda::DeviceContext& context, const ModelConfig& config, GpuInferenceOptions opts)
      : ctx(context), cfg(config), options(opts), softmax_scale(config.softmax_scale()) {}

  // ---- loading ----
  struct Loader {
    Impl& m;
    const WeightSource& source;
    std::unordered_map<std::string, std::vector<int64_t>> shapes;
    std::vector<float> host;
    DeviceArray<float> staging;

    const std::vector<int64_t>& shape_of(const std::string& name) const {
      auto it = shapes.find(name);
      FRUGAL_CHECK(it != shapes.end(), "GpuInferenceModel: no tensor {} in the model's layout",
                   name);
      return it->second;
    }
    std::span<float> read(const std::string& name) {
      const std::vector<int64_t>& shape = shape_of(name);
      host.resize(static_cast<size_t>(shape_numel(shape)));
      source(name, shape, std::span<float>(host));
      return std::span<float>(host);
    }
    // Host staging -> device fp32 at `dst` (synchronous: the host buffer is reused next).
    void upload(float* dst, std::span<const float> values) {
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(dst, values.data(), values.size_bytes(),
                                        cudaMemcpyHostToDevice, m.ctx.stream));
      FRUGAL_CUDA_CHECK(cudaStreamSynchronize(m.ctx.stream));
    }
    DeviceArray<float> vector(const std::string& name) {
      std::span<float> values = read(name);
      DeviceArray<float> out(m.ctx, static_cast<int64_t>(values.size()));
      upload(out.data(), values);
      return out;
    }
    // groups x (tensors concatenated along out), each tensor [rows_i, in].
    Matrix matrix(const std::vector<std::vector<std::string>>& groups, bool want_fp8) {
      Matrix mat;
      mat.groups = static_cast<int64_t>(groups.size());
      for (const std::string& name : groups[0]) {
        const std::vector<int64_t>& shape = shape_of(name);
        FRUGAL_CHECK(shape.size() == 2, "GpuInferenceModel: {} is not a matrix", name);
        mat.out += shape[0];
        mat.in = shape[1];
      }
      mat.fp8 = want_fp8 && mat.out % kFp8BlockSize == 0 && mat.in % kFp8BlockSize == 0;
      const int64_t count = mat.out * mat.in;
      const int64_t blocks = (mat.out / kFp8BlockSize) * (mat.in / kFp8BlockSize);
      if (mat.fp8) {
        mat.q = DeviceArray<uint8_t>(m.ctx, mat.groups * count);
        mat.scales = DeviceArray<float>(m.ctx, mat.groups * blocks);
      } else {
        mat.w = DeviceArray<bf16>(m.ctx, mat.groups * count);
      }
      if (staging.size() < count) staging = DeviceArray<float>(m.ctx, count);
      for (int64_t g = 0; g < mat.groups; ++g) {
        int64_t row = 0;
        for (const std::string& name : groups[g]) {
          std::span<float> values = read(name);
          FRUGAL_CHECK(static_cast<int64_t>(values.size()) % mat.in == 0 &&
                           row * mat.in + static_cast<int64_t>(values.size()) <= count,
                       "GpuInferenceModel: {} does not fit its stacked matrix", name);
          upload(staging.data() + row * mat.in, values);
          row += static_cast<int64_t>(values.size()) / mat.in;
        }
        FRUGAL_CHECK(row == mat.out, "GpuInferenceModel: group {} of {} has {} rows, expected {}",
                     g, groups[0][0], row, mat.out);
        if (mat.fp8)
          cuda::quantize_weight_128x128(mat.q.data() + g * count, mat.scales.data() + g * blocks,
                                        staging.data(), mat.out, mat.in, kPowerOfTwoScales,
                                        m.ctx.stream);
        else
          cuda::cast<float, bf16>(mat.w.data() + g * count, staging.data(), count, m.ctx.stream);
        // The staging array is overwritten by the next group.
        FRUGAL_CUDA_CHECK(cudaStreamSynchronize(m.ctx.stream));
      }
      return mat;
    }
    Ffn ffn(const std::vector<std::string>& prefixes, int64_t inter, bool want_fp8) {
      std::vector<std::vector<std::string>> gate_up, down;
      for (const std::string& p : prefixes) {
        gate_up.push_back({p + ".gate_proj.weight", p + ".up_proj.weight"});
        down.push_back({p + ".down_proj.weight"});
      }
      Ffn f;
      f.inter = inter;
      f.gate_up = matrix(gate_up, want_fp8);
      f.down = matrix(down, want_fp8);
      return f;
    }
  };

  Layer load_layer(Loader& L, const std::string& prefix, int64_t index) {
    const bool fp8 = options.weights == DecodeWeights::Fp8;
    auto w = [&](const std::string& name) { return prefix + name + ".weight"; };
    Layer layer;
    layer.input_norm = L.vector(w(".input_layernorm"));
    layer.post_norm = L.vector(w(".post_attention_layernorm"));
    if (cfg.q_lora_rank > 0) {
      layer.q_a = L.matrix({{w(".self_attn.q_a_proj")}}, fp8);
      layer.q_a_norm = L.vector(w(".self_attn.q_a_layernorm"));
      layer.q_b = L.matrix({{w(".self_attn.q_b_proj")}}, fp8);
    } else {
      layer.q = L.matrix({{w(".self_attn.q_proj")}}, fp8);
    }
    layer.kv_a = L.matrix({{w(".self_attn.kv_a_proj_with_mqa")}}, fp8);
    layer.kv_a_norm = L.vector(w(".self_attn.kv_a_layernorm"));
    layer.kv_b = L.matrix({{w(".self_attn.kv_b_proj")}}, /*want_fp8=*/false);
    layer.o = L.matrix({{w(".self_attn.o_proj")}}, fp8);
    layer.moe = cfg.is_moe_layer(index);
    if (!layer.moe) {
      layer.dense = L.ffn({prefix + ".mlp"}, cfg.intermediate_size, fp8);
      return layer;
    }
    layer.router = L.vector(w(".mlp.gate"));
    if (router.topk_method == cpu::TopkMethod::NoauxTc)
      layer.bias = L.vector(prefix + ".mlp.gate.e_score_correction_bias");
    std::vector<std::string> experts;
    for (int64_t e = 0; e < cfg.n_routed_experts; ++e)
      experts.push_back(prefix + ".mlp.experts." + std::to_string(e));
    layer.experts = L.ffn(experts, cfg.moe_intermediate_size, fp8);
    if (cfg.n_shared_experts > 0)
      layer.shared = L.ffn({prefix + ".mlp.shared_experts"},
                           cfg.moe_intermediate_size * cfg.n_shared_experts, fp8);
    return layer;
  }

  void load(const WeightSource& source) {
    Loader L{*this, source, {}, {}, {}};
    for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) L.shapes[spec.name] = spec.shape;
    if (cfg.n_routed_experts > 0) router = router_params(cfg);
    embed = L.vector("model.embed_tokens.weight");
    final_norm = L.vector("model.norm.weight");
    lm_head = L.matrix({{"lm_head.weight"}}, /*want_fp8=*/false);
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      layers.push_back(load_layer(L, "model.layers." + std::to_string(i), i));
    if (cfg.num_nextn_predict_layers > 0) {
      const std::string prefix = "model.layers." + std::to_string(cfg.num_hidden_layers);
      enorm = L.vector(prefix + ".enorm.weight");
      hnorm = L.vector(prefix + ".hnorm.weight");
      eh_proj = L.matrix({{prefix + ".eh_proj.weight"}}, /*want_fp8=*/false);
      mtp_norm = L.vector(prefix + ".shared_head.norm.weight");
      mtp_layer = load_layer(L, prefix, cfg.num_hidden_layers);
    }
  }

  // ---- building blocks (all asynchronous on ctx.stream) ----

  // y [rows, out] (y_type) = x [rows, in] BF16 · W^T (W a single-group Matrix).
  void linear(const Matrix& mat, const bf16* x, void* y, DataType y_type, int64_t rows) {
    if (rows == 0) return;
    if (!mat.fp8) {
      cuda::gemm(ctx.blas, false, true, rows, mat.out, mat.in, 1.0f, x, mat.in, mat.w.data(),
                 mat.in, DataType::BF16, 0.0f, y, mat.out, y_type, ctx.stream);
      return;
    }
    const int64_t padded = round_up(rows, kFp8RowMultiple);
    DeviceArray<bf16> x_padded;
    const bf16* source = x;
    if (padded != rows) {
      x_padded = DeviceArray<bf16>(ctx, padded * mat.in);
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(x_padded.data(), x,
                                        static_cast<size_t>(rows * mat.in) * sizeof(bf16),
                                        cudaMemcpyDeviceToDevice, ctx.stream));
      FRUGAL_CUDA_CHECK(cudaMemsetAsync(x_padded.data() + rows * mat.in, 0,
                                        static_cast<size_t>((padded - rows) * mat.in) *
                                            sizeof(bf16),
                                        ctx.stream));
      source = x_padded.data();
    }
    DeviceArray<uint8_t> q(ctx, padded * mat.in);
    DeviceArray<float> scales(ctx, fp8_block_count(mat.in) * padded);
    cuda::quantize_act_1x128<bf16>(q.data(), scales.data(), source, padded, mat.in,
                                   kPowerOfTwoScales, ctx.stream);
    DeviceArray<uint8_t> y_padded;
    void* target = y;
    if (padded != rows) {
      y_padded = DeviceArray<uint8_t>(
          ctx, padded * mat.out * static_cast<int64_t>(type_bytes(y_type)));
      target = y_padded.data();
    }
    cuda::gemm_fp8_nt(ctx.blas, padded, mat.out, mat.in, q.data(), scales.data(), mat.q.data(),
                      mat.scales.data(), cuda::Fp8Scaling::Block128x128, 0.0f, target, mat.out,
                      y_type, ctx.stream);  // [padded, out]
    if (target != y)
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(y, target,
                                        static_cast<size_t>(rows * mat.out) * type_bytes(y_type),
                                        cudaMemcpyDeviceToDevice, ctx.stream));
  }

  // Grouped form over expert-major rows: group g owns rows [host_offsets[g], host_offsets[g+1]).
  void grouped_linear(const Matrix& mat, const bf16* x, void* y, DataType y_type,
                      const std::vector<int64_t>& host_offsets, const int64_t* device_offsets) {
    const int64_t rows = host_offsets.back();
    if (rows == 0) return;
    if (!mat.fp8) {
      cuda::grouped_gemm_nt(ctx.blas, mat.groups, host_offsets.data(), mat.out, mat.in, x,
                            mat.w.data(), DataType::BF16, y, y_type, ctx.stream);
      return;
    }
    DeviceArray<uint8_t> q(ctx, rows * mat.in);
    DeviceArray<float> scales(ctx, fp8_block_count(mat.in) * rows);
    cuda::quantize_act_1x128_grouped<bf16>(q.data(), scales.data(), x, device_offsets, mat.groups,
                                           rows, mat.in, kPowerOfTwoScales, ctx.stream);
    cuda::grouped_gemm_fp8_nt(ctx.blas, mat.groups, host_offsets.data(), mat.out, mat.in,
                              q.data(), scales.data(), mat.q.data(), mat.scales.data(), y, y_type,
                              ctx.stream);
  }

  // y [rows, hidden] fp32 = down(swiglu(gate_up(x))), x [rows, hidden] BF16.
  void dense_ffn(const Ffn& f, const bf16* x, float* y, int64_t rows) {
    DeviceArray<bf16> gu(ctx, rows * 2 * f.inter), h(ctx, rows * f.inter);
    linear(f.gate_up, x, gu.data(), DataType::BF16, rows);  // [rows, 2*inter]
    cuda::swiglu_fwd<bf16>(h.data(), gu.data(), gu.data() + f.inter, rows, f.inter, 2 * f.inter,
                           ctx.stream);  // [rows, inter]
    linear(f.down, h.data(), y, DataType::F32, rows);  // [rows, hidden]
  }

  void ensure_rope(int64_t positions) {
    if (rope_positions >= positions) return;
    const int64_t count = std::max<int64_t>({positions, 2 * rope_positions, 4096});
    const RopeTable table = make_rope_table(cfg, count);
    const int64_t half = table.rope_dim / 2;
    std::vector<float> cos(table.cos.begin(), table.cos.end()),
        sin(table.sin.begin(), table.sin.end());
    rope_cos = DeviceArray<float>(ctx, count * half);
    rope_sin = DeviceArray<float>(ctx, count * half);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(rope_cos.data(), cos.data(), cos.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, ctx.stream));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(rope_sin.data(), sin.data(), sin.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, ctx.stream));
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // the host vectors die here
    rope_positions = count;
  }

  RowData upload_rows(const Rows& rows, const PagedLatentCache& cache,
                      const std::vector<int64_t>& logit_rows) {
    const int64_t n = rows.size();
    FRUGAL_CHECK(n > 0, "GpuInferenceModel: a forward over no rows");
    FRUGAL_CHECK(static_cast<int64_t>(rows.positions.size()) == n &&
                     static_cast<int64_t>(rows.sequences.size()) == n,
                 "GpuInferenceModel: Rows with {} tokens, {} positions, {} sequences", n,
                 rows.positions.size(), rows.sequences.size());
    std::vector<int64_t> batch_sequences;
    std::map<int64_t, int32_t> batch_index;
    std::vector<int32_t> row_sequence(static_cast<size_t>(n)), lengths(row_sequence.size());
    int64_t max_pages = 1, max_length = 1;
    for (int64_t r = 0; r < n; ++r) {
      const int32_t token = rows.tokens[r];
      FRUGAL_CHECK(token >= 0 && token < cfg.vocab_size,
                   "token id {} outside the vocabulary [0, {})", token, cfg.vocab_size);
      const int64_t seq = rows.sequences[r], position = rows.positions[r];
      FRUGAL_CHECK(position >= 0 && position < cache.length(seq),
                   "GpuInferenceModel: row {} at position {} of sequence {}, whose cache holds {} "
                   "positions (grow it first)",
                   r, position, seq, cache.length(seq));
      auto [it, inserted] =
          batch_index.emplace(seq, static_cast<int32_t>(batch_sequences.size()));
      if (inserted) {
        batch_sequences.push_back(seq);
        max_pages = std::max<int64_t>(max_pages, cache.page_table(seq).size());
      }
      row_sequence[r] = it->second;
      lengths[r] = static_cast<int32_t>(position + 1);
      max_length = std::max<int64_t>(max_length, position + 1);
    }
    for (int64_t row : logit_rows)
      FRUGAL_CHECK(row >= 0 && row < n, "logit row {} of {} rows", row, n);
    const int64_t sequences = static_cast<int64_t>(batch_sequences.size());
    const int64_t logit_count = static_cast<int64_t>(logit_rows.size());
    // One buffer: tokens | positions | row_sequence | lengths | page_table | logit_rows.
    std::vector<int32_t> packed;
    packed.reserve(static_cast<size_t>(4 * n + sequences * max_pages + logit_count));
    packed.insert(packed.end(), rows.tokens.begin(), rows.tokens.end());
    packed.insert(packed.end(), rows.positions.begin(), rows.positions.end());
    packed.insert(packed.end(), row_sequence.begin(), row_sequence.end());
    packed.insert(packed.end(), lengths.begin(), lengths.end());
    for (int64_t seq : batch_sequences) {
      const std::vector<int32_t>& pages = cache.page_table(seq);
      packed.insert(packed.end(), pages.begin(), pages.end());
      packed.insert(packed.end(), static_cast<size_t>(max_pages) - pages.size(), 0);
    }
    for (int64_t row : logit_rows) packed.push_back(static_cast<int32_t>(row));
    RowData d;
    d.buffer = DeviceArray<int32_t>(ctx, static_cast<int64_t>(packed.size()));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(d.buffer.data(), packed.data(),
                                      packed.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                      ctx.stream));
    // A pageable source: the call returns once the data is staged, but keep it simple and safe.
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    const int32_t* base = d.buffer.data();
    d.tokens = base;
    d.positions = base + n;
    d.row_sequence = base + 2 * n;
    d.lengths = base + 3 * n;
    d.page_table = base + 4 * n;
    d.logit_rows = d.page_table + sequences * max_pages;
    d.rows = n;
    d.max_pages = max_pages;
    d.max_length = max_length;
    d.logit_count = logit_count;
    ensure_rope(max_length);
    return d;
  }

  // x [rows, hidden] fp32 += absorbed MLA over the paged cache (layer `cache_layer` of `pool`).
  void attention(const Layer& L, const bf16* normed, float* x, const RowData& rd, bf16* pool,
                 int64_t cache_layers, int64_t cache_layer, int64_t page_size) {
    const int64_t n = rd.rows, heads = cfg.num_attention_heads;
    const int64_t nope = cfg.qk_nope_head_dim, rope = cfg.qk_rope_head_dim, vdim = cfg.v_head_dim;
    const int64_t qk = nope + rope, latent = cfg.kv_lora_rank, entry = latent + rope;
    DeviceArray<float> rstd(ctx, n);

    // Queries [rows, heads, qk] BF16, RoPE on the last `rope` dims of each head.
    DeviceArray<bf16> q(ctx, n * heads * qk);
    if (cfg.q_lora_rank > 0) {
      const int64_t ql = cfg.q_lora_rank;
      DeviceArray<float> c_q(ctx, n * ql);
      DeviceArray<bf16> c_q_normed(ctx, n * ql);
      linear(L.q_a, normed, c_q.data(), DataType::F32, n);  // [rows, q_lora]
      cuda::rmsnorm_fwd<float, bf16>(c_q_normed.data(), rstd.data(), c_q.data(),
                                     L.q_a_norm.data(), n, ql, kLatentNormEps, ctx.stream);
      linear(L.q_b, c_q_normed.data(), q.data(), DataType::BF16, n);
    } else {
      linear(L.q, normed, q.data(), DataType::BF16, n);
    }
    cuda::rope_fwd<bf16>(q.data(), rope_cos.data(), rope_sin.data(), rope, rd.positions, n, heads,
                         qk, nope, ctx.stream);

    // Latent entries: kv [rows, latent + rope] fp32; c normed, k_pe rotated; -> the cache.
    DeviceArray<float> kv(ctx, n * entry), c(ctx, n * latent), c_normed(ctx, n * latent);
    linear(L.kv_a, normed, kv.data(), DataType::F32, n);
    cuda::copy_2d<float>(c.data(), latent, kv.data(), entry, n, latent, ctx.stream);
    cuda::rmsnorm_fwd<float, float>(c_normed.data(), rstd.data(), c.data(), L.kv_a_norm.data(), n,
                                    latent, kLatentNormEps, ctx.stream);
    cuda::rope_fwd<float>(kv.data(), rope_cos.data(), rope_sin.data(), rope, rd.positions, n, 1,
                          entry, latent, ctx.stream);
    cuda::write_latent_entries(pool, c_normed.data(), latent, kv.data() + latent, entry,
                               rd.page_table, rd.row_sequence, rd.positions, n, latent, rope,
                               cache_layers, cache_layer, page_size, rd.max_pages, ctx.stream);

    // Absorbed query q_full [rows, heads, entry] = [W_UK[h]^T q_nope[h] ; q_pe[h]], with kv_b
    // viewed [heads, nope + v, latent]: per head, [rows, nope] · W_UK[h] [nope, latent].
    const int64_t kv_b_head = (nope + vdim) * latent;
    DeviceArray<bf16> q_full(ctx, n * heads * entry);
    cuda::gemm_batched(ctx.blas, false, false, n, latent, nope, 1.0f, q.data(), heads * qk, qk,
                       L.kv_b.w.data(), latent, kv_b_head, DataType::BF16, 0.0f, q_full.data(),
                       heads * entry, entry, DataType::BF16, heads, ctx.stream);
    cuda::copy_2d<bf16>(q_full.data() + latent, entry, q.data() + nope, qk, n * heads, rope,
                        ctx.stream);

    // o_lat [rows, heads, latent] = attention over the cached entries 0..position.
    MlaDecodeShape shape;
    shape.rows = n;
    shape.heads = heads;
    shape.kv_lora = latent;
    shape.rope = rope;
    shape.layers = cache_layers;
    shape.layer = cache_layer;
    shape.page_size = page_size;
    shape.max_pages = rd.max_pages;
    shape.softmax_scale = static_cast<float>(softmax_scale);
    const size_t workspace_bytes = cuda::mla_decode_workspace_bytes(shape, rd.max_length);
    DeviceArray<uint8_t> workspace(ctx, static_cast<int64_t>(workspace_bytes));
    DeviceArray<bf16> o_lat(ctx, n * heads * latent);
    cuda::mla_decode_attention(o_lat.data(), q_full.data(), pool, rd.page_table, rd.row_sequence,
                               rd.lengths, shape, rd.max_length, workspace.data(),
                               workspace_bytes, ctx.stream);

    // o [rows, heads, v]: per head, o_lat[h] [rows, latent] · W_UV[h]^T (W_UV[h] [v, latent]).
    DeviceArray<bf16> o(ctx, n * heads * vdim);
    cuda::gemm_batched(ctx.blas, false, true, n, vdim, latent, 1.0f, o_lat.data(), heads * latent,
                       latent, L.kv_b.w.data() + nope * latent, latent, kv_b_head, DataType::BF16,
                       0.0f, o.data(), heads * vdim, vdim, DataType::BF16, heads, ctx.stream);
    DeviceArray<float> y(ctx, n * cfg.hidden_size);
    linear(L.o, o.data(), y.data(), DataType::F32, n);  // [rows, hidden]
    cuda::axpby<float>(x, y.data(), 1.0f, 1.0f, n * cfg.hidden_size, ctx.stream);
  }

  // x [rows, hidden] fp32 += MoE(norm(x)); normed_f32 feeds the fp32 router, normed the experts.
  void moe(const Layer& L, const float* normed_f32, const bf16* normed, float* x, int64_t n) {
    const int64_t d = cfg.hidden_size, E = router.n_experts, K = router.top_k;
    DeviceArray<float> logits(ctx, n * E), scores(ctx, n * E), topk_weight(ctx, n * K);
    DeviceArray<int32_t> topk_idx(ctx, n * K);
    cuda::gemm(ctx.blas, false, true, n, E, d, 1.0f, normed_f32, d, L.router.data(), d,
               DataType::F32, 0.0f, logits.data(), E, DataType::F32, ctx.stream);  // [rows, E]
    cuda::router_fwd(topk_idx.data(), topk_weight.data(), scores.data(), logits.data(),
                     L.bias.size() > 0 ? L.bias.data() : nullptr, n, router, ctx.stream);
    const bool fp8 = L.experts.gate_up.fp8 || L.experts.down.fp8;
    const int64_t align = fp8 ? cuda::kFp8GroupRowAlign : 1;
    const int64_t bound = n * K + E * (align - 1);
    DeviceArray<int64_t> offsets(ctx, E + 1), counts(ctx, E);
    DeviceArray<int32_t> assignment_row(ctx, n * K), row_assignment(ctx, bound);
    DeviceArray<uint8_t> workspace(
        ctx, static_cast<int64_t>(cuda::expert_permutation_workspace_bytes(n, K, E)));
    cuda::build_expert_permutation(offsets.data(), counts.data(), nullptr, assignment_row.data(),
                                   row_assignment.data(), topk_idx.data(), n, K, E, align,
                                   workspace.data(), ctx.stream);
    std::vector<int64_t> host_offsets(static_cast<size_t>(E + 1));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(host_offsets.data(), offsets.data(),
                                      host_offsets.size() * sizeof(int64_t),
                                      cudaMemcpyDeviceToHost, ctx.stream));
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));  // the grouped GEMMs' row blocks
    const int64_t padded = host_offsets.back();
    FRUGAL_CHECK(padded >= n * K && padded <= bound,
                 "GpuInferenceModel: expert permutation of {} rows outside [{}, {}]", padded,
                 n * K, bound);
    const int64_t inter = L.experts.inter;
    DeviceArray<bf16> xp(ctx, padded * d), gu(ctx, padded * 2 * inter), h(ctx, padded * inter);
    DeviceArray<float> expert_out(ctx, padded * d), y(ctx, n * d);
    cuda::permute_rows<bf16>(xp.data(), normed, row_assignment.data(), padded, K, d,
                             ctx.stream);  // [padded, hidden]
    grouped_linear(L.experts.gate_up, xp.data(), gu.data(), DataType::BF16, host_offsets,
                   offsets.data());  // [padded, 2*inter]
    cuda::swiglu_fwd<bf16>(h.data(), gu.data(), gu.data() + inter, padded, inter, 2 * inter,
                           ctx.stream);
    grouped_linear(L.experts.down, h.data(), expert_out.data(), DataType::F32, host_offsets,
                   offsets.data());  // [padded, hidden]
    const bool shared = L.shared.inter > 0;
    if (shared) dense_ffn(L.shared, normed, y.data(), n);
    cuda::combine_fwd<float>(y.data(), expert_out.data(), topk_weight.data(),
                             assignment_row.data(), n, K, d, /*accumulate=*/shared, ctx.stream);
    cuda::axpby<float>(x, y.data(), 1.0f, 1.0f, n * d, ctx.stream);
  }

  void layer_forward(const Layer& L, float* x, const RowData& rd, bf16* pool,
                     int64_t cache_layers, int64_t cache_layer, int64_t page_size) {
    const int64_t n = rd.rows, d = cfg.hidden_size;
    DeviceArray<float> rstd(ctx, n);
    DeviceArray<bf16> normed(ctx, n * d);
    cuda::rmsnorm_fwd<float, bf16>(normed.data(), rstd.data(), x, L.input_norm.data(), n, d,
                                   cfg.rms_norm_eps, ctx.stream);
    attention(L, normed.data(), x, rd, pool, cache_layers, cache_layer, page_size);
    cuda::rmsnorm_fwd<float, bf16>(normed.data(), rstd.data(), x, L.post_norm.data(), n, d,
                                   cfg.rms_norm_eps, ctx.stream);
    if (L.moe) {
      DeviceArray<float> normed_f32(ctx, n * d);
      cuda::rmsnorm_fwd<float, float>(normed_f32.data(), rstd.data(), x, L.post_norm.data(), n, d,
                                      cfg.rms_norm_eps, ctx.stream);
      moe(L, normed_f32.data(), normed.data(), x, n);
    } else {
      DeviceArray<float> y(ctx, n * d);
      dense_ffn(L.dense, normed.data(), y.data(), n);
      cuda::axpby<float>(x, y.data(), 1.0f, 1.0f, n * d, ctx.stream);
    }
  }

  // logits [logit rows, vocab] (host) = lm_head(norm(x)) for rd's logit rows.
  void head(const float* x, const float* norm_weight, const RowData& rd,
            std::vector<float>* logits) {
    if (logits == nullptr) return;
    const int64_t n = rd.rows, d = cfg.hidden_size, vocab = cfg.vocab_size;
    logits->assign(static_cast<size_t>(rd.logit_count * vocab), 0.0f);
    if (rd.logit_count == 0) return;
    DeviceArray<float> rstd(ctx, n);
    DeviceArray<bf16> normed(ctx, n * d), picked(ctx, rd.logit_count * d);
    cuda::rmsnorm_fwd<float, bf16>(normed.data(), rstd.data(), x, norm_weight, n, d,
                                   cfg.rms_norm_eps, ctx.stream);
    cuda::gather_rows(picked.data(), normed.data(), rd.logit_rows, rd.logit_count, d, ctx.stream);
    DeviceArray<float> out(ctx, rd.logit_count * vocab);
    linear(lm_head, picked.data(), out.data(), DataType::F32, rd.logit_count);  // [rows, vocab]
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(logits->data(), out.data(), logits->size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, ctx.stream));
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  }

  static bf16* pool_of(const PagedLatentCache& cache) {
    return static_cast<bf16*>(cache.storage());
  }
};

GpuInferenceModel::GpuInferenceModel(cuda::DeviceContext& ctx, const ModelConfig& cfg,
                                     const WeightSource& source, GpuInferenceOptions options)
    : impl_(std::make_unique<Impl>(ctx, cfg, options)) {
  FRUGAL_CHECK(static_cast<bool>(source), "GpuInferenceModel: no weight source");
  FRUGAL_CHECK(cfg.qk_rope_head_dim % 2 == 0 && cfg.qk_rope_head_dim > 0,
               "GpuInferenceModel: qk_rope_head_dim {} must be even and positive",
               cfg.qk_rope_head_dim);
  if (options.weights == DecodeWeights::Fp8) {
    FRUGAL_CHECK(ctx.compute_capability >= 89,
                 "GpuInferenceModel: fp8 weights need an sm_89 or newer GPU (this one is sm_{}); "
                 "use bf16 weights",
                 ctx.compute_capability);
    FRUGAL_CHECK(cfg.hidden_size % kFp8BlockSize == 0,
                 "GpuInferenceModel: fp8 weights need hidden_size a multiple of {} (got {}); use "
                 "bf16 weights",
                 kFp8BlockSize, cfg.hidden_size);
  }
  cudaDeviceProp prop{};
  FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx.device));
  impl_->device_name = prop.name;
  impl_->load(source);
  impl_->ensure_rope(std::min<int64_t>(cfg.max_position_embeddings, 4096));
}

GpuInferenceModel::~GpuInferenceModel() = default;

const ModelConfig& GpuInferenceModel::config() const { return impl_->cfg; }

std::string GpuInferenceModel::describe() const {
  return "cuda:" + std::to_string(impl_->ctx.device) + " " + impl_->device_name + " (sm_" +
         std::to_string(impl_->ctx.compute_capability) + "), " +
         decode_weights_name(impl_->options.weights) + " weights";
}

size_t GpuInferenceModel::weight_bytes() const {
  const Impl& m = *impl_;
  size_t total = m.embed.bytes() + m.final_norm.bytes() + m.lm_head.bytes() + m.enorm.bytes() +
                 m.hnorm.bytes() + m.mtp_norm.bytes() + m.eh_proj.bytes() + m.mtp_layer.bytes();
  for (const Layer& layer : m.layers) total += layer.bytes();
  return total;
}

PagedLatentCache GpuInferenceModel::make_cache(bool mtp, int64_t page_size,
                                               int64_t num_pages) const {
  FRUGAL_CHECK(!mtp || has_mtp(), "the model has no MTP module (num_nextn_predict_layers = 0)");
  const int64_t layers = mtp ? 1 : impl_->cfg.num_hidden_layers;
  PagedLatentCache cache(layers, entry_dim(), page_size, num_pages, /*host_storage=*/false);
  auto pool = std::make_shared<DeviceArray<bf16>>(impl_->ctx,
                                                  num_pages * layers * page_size * entry_dim());
  // Entries are written before they are read; zeros keep a stray read finite.
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(pool->data(), 0, pool->bytes(), impl_->ctx.stream));
  // storage() is the device pointer; the shared_ptr keeps the DeviceArray alive.
  cache.attach_storage(std::shared_ptr<void>(pool, pool->data()));
  return cache;
}

void GpuInferenceModel::forward(const Rows& rows, PagedLatentCache& cache,
                                const std::vector<int64_t>& logit_rows,
                                std::vector<float>* logits, std::vector<float>* hidden) const {
  Impl& m = *impl_;
  FRUGAL_CHECK(!cache.host_storage() && cache.storage() != nullptr &&
                   cache.layers() == m.cfg.num_hidden_layers && cache.entry_dim() == entry_dim(),
               "GpuInferenceModel::forward: the cache was not made by this model");
  const RowData rd = m.upload_rows(rows, cache, logit_rows);
  const int64_t n = rd.rows, d = m.cfg.hidden_size;
  DeviceArray<float> x(m.ctx, n * d);  // [rows, hidden] residual stream
  cuda::embedding_fwd<float>(x.data(), m.embed.data(), rd.tokens, n, d, m.ctx.stream);
  for (size_t i = 0; i < m.layers.size(); ++i)
    m.layer_forward(m.layers[i], x.data(), rd, Impl::pool_of(cache), cache.layers(),
                    static_cast<int64_t>(i), cache.page_size());
  m.head(x.data(), m.final_norm.data(), rd, logits);
  if (hidden != nullptr) {
    DeviceArray<float> rstd(m.ctx, n), normed(m.ctx, n * d);
    cuda::rmsnorm_fwd<float, float>(normed.data(), rstd.data(), x.data(), m.final_norm.data(), n,
                                    d, m.cfg.rms_norm_eps, m.ctx.stream);
    hidden->resize(static_cast<size_t>(n * d));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(hidden->data(), normed.data(), normed.bytes(),
                                      cudaMemcpyDeviceToHost, m.ctx.stream));
  }
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(m.ctx.stream));
}

void GpuInferenceModel::forward_mtp(const Rows& rows, const float* hidden,
                                    PagedLatentCache& cache,
                                    const std::vector<int64_t>& logit_rows,
                                    std::vector<float>* logits) const {
  Impl& m = *impl_;
  FRUGAL_CHECK(has_mtp(), "the model has no MTP module (num_nextn_predict_layers = 0)");
  FRUGAL_CHECK(!cache.host_storage() && cache.storage() != nullptr && cache.layers() == 1 &&
                   cache.entry_dim() == entry_dim(),
               "GpuInferenceModel::forward_mtp: the cache was not made for the MTP module");
  FRUGAL_CHECK(hidden != nullptr, "GpuInferenceModel::forward_mtp: no hidden states");
  const RowData rd = m.upload_rows(rows, cache, logit_rows);
  const int64_t n = rd.rows, d = m.cfg.hidden_size;
  DeviceArray<float> e(m.ctx, n * d), h(m.ctx, n * d), rstd(m.ctx, n);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(h.data(), hidden, h.bytes(), cudaMemcpyHostToDevice,
                                    m.ctx.stream));
  cuda::embedding_fwd<float>(e.data(), m.embed.data(), rd.tokens, n, d, m.ctx.stream);
  DeviceArray<bf16> en(m.ctx, n * d), hn(m.ctx, n * d), cat(m.ctx, n * 2 * d);
  cuda::rmsnorm_fwd<float, bf16>(en.data(), rstd.data(), e.data(), m.enorm.data(), n, d,
                                 m.cfg.rms_norm_eps, m.ctx.stream);
  cuda::rmsnorm_fwd<float, bf16>(hn.data(), rstd.data(), h.data(), m.hnorm.data(), n, d,
                                 m.cfg.rms_norm_eps, m.ctx.stream);
  // [rows, 2 * hidden] = [enorm(e) ; hnorm(h)]
  cuda::copy_2d<bf16>(cat.data(), 2 * d, en.data(), d, n, d, m.ctx.stream);
  cuda::copy_2d<bf16>(cat.data() + d, 2 * d, hn.data(), d, n, d, m.ctx.stream);
  DeviceArray<float> x(m.ctx, n * d);
  m.linear(m.eh_proj, cat.data(), x.data(), DataType::F32, n);  // [rows, hidden]
  m.layer_forward(m.mtp_layer, x.data(), rd, Impl::pool_of(cache), 1, 0, cache.page_size());
  m.head(x.data(), m.mtp_norm.data(), rd, logits);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(m.ctx.stream));
}

}  // namespace frugal::infer

#endif  // FRUGAL_HAVE_CUDA
