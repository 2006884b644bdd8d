// GpuPipelineStage: one pipeline stage of the GPU training model (see gpu_pipeline_stage.h). The
// whole model (GpuModel, gpu_model.cc) is stage 0 of 1 of this code.
//   first stage   ids [rows] -> embedding -> residual[0]            (else residual[0] = input)
//   every stage   residual[i+1] = layers[i](residual[i])            fp32 [rows, hidden]
//   last stage    normed = norm(residual.back()); logits = head(normed) [rows, vocab] T; CE
//                 MTP depth k: tokens and targets shifted by k, h_prev = previous depth's rows
// The per-term loss sums live on the device (one buffer: CE sums [1+D] double, valid targets
// [1+D] int64, MoE balance losses [MoE layers] double) and leave it with one copy at the end of
// forward; the backward reads the valid counts on the device (xent_grad_scales).
//
// Accumulation rule: parameter gradients accumulate (+=); dinput is assigned. A deferred backward
// (backward_input with defer_weights) passes a WeightGradQueue to the layers and MTP modules; the
// head's and embedding's weight gradients are made at once either way.
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_pipeline_stage.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/gpu_profiler.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/embedding/embedding_cuda.h"
#include "kernels/rope/rope.h"
#include "kernels/xent/xent_cuda.h"
#include "model/gpu/gpu_block.h"
#include "model/gpu/gpu_linear.h"
#include "model/gpu/gpu_model_kernels.h"
#include "model/gpu/gpu_mtp.h"
#include "model/gpu/gpu_rmsnorm.h"

namespace frugal::gpu {

GpuPipelineStage::Run::~Run() = default;

namespace {

const char* const kEmbedName = "model.embed_tokens.weight";

// Copies `rows_per_block` rows of `row_elements` elements out of each of `blocks` blocks of
// `src_rows` rows into consecutive blocks of `dst_rows` rows (the MTP shifts and their gradient
// map), on the stream.
template <class E>
void copy_row_blocks(cuda::DeviceContext& ctx, E* dst, int64_t dst_rows, const E* src,
                     int64_t src_rows, int64_t rows_per_block, int64_t row_elements,
                     int64_t blocks) {
  if (rows_per_block == 0 || blocks == 0) return;
  const size_t width = static_cast<size_t>(rows_per_block * row_elements) * sizeof(E);
  FRUGAL_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_rows * row_elements) * sizeof(E),
                                      src, static_cast<size_t>(src_rows * row_elements) * sizeof(E),
                                      width, static_cast<size_t>(blocks), cudaMemcpyDeviceToDevice,
                                      ctx.stream));
}

void copy_floats(cuda::DeviceContext& ctx, float* dst, const float* src, int64_t n) {
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, ctx.stream));
}

// Where the loss terms of one micro-batch sit in the run's device buffer (8-byte slots):
//   [0, 1+D)            CE sums (double): main, then MTP depths
//   [1+D, 2+2D)         valid targets (int64), same order
//   [2+2D, 2+2D+moe)    balance losses (double) of this stage's MoE layers, in registration order
struct LossLayout {
  int64_t depth_slots = 0, moe_layers = 0;
  int64_t slots() const { return 2 * (1 + depth_slots) + moe_layers; }
  size_t bytes() const { return static_cast<size_t>(slots()) * 8; }
  size_t sums_offset() const { return 0; }
  size_t valid_offset() const { return static_cast<size_t>(1 + depth_slots) * 8; }
  size_t balance_offset() const { return static_cast<size_t>(2 * (1 + depth_slots)) * 8; }
};
static_assert(sizeof(double) == 8 && sizeof(int64_t) == 8);

// The stage's code for one activation type T (float: fp32 recipe, bf16: bf16 and fp8 recipes).
class StageBody {
 public:
  virtual ~StageBody() = default;
  virtual std::unique_ptr<GpuPipelineStage::Run> forward(const float* input, const int32_t* tokens,
                                                         const int32_t* targets, int64_t batch,
                                                         int64_t seq, const LossWeights& weights,
                                                         bool training, float* output,
                                                         StageLosses& losses) = 0;
  virtual void backward(GpuPipelineStage::Run& run, const float* doutput, float* dinput,
                        double loss_scale, WeightGradQueue* deferred) = 0;
  virtual void refresh() = 0;
  virtual void update_balance_bias(double gamma) = 0;
  virtual std::vector<DeviceLoadCounter> expert_load_counters() = 0;
  virtual std::vector<ExpertLoad> expert_load() = 0;

  int stage = 0, stages = 1;
  int64_t layer_begin = 0, layer_end = 0;
  std::function<void(int64_t)> gradients_final;  // GpuPipelineStage::set_gradients_final_callback
  bool owns_embedding_copy = false;
  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
};

template <class T>
class Stage final : public StageBody {
 public:
  Stage(cuda::DeviceContext& ctx, ParamRegistry& registry, const ModelConfig& cfg, Recipe recipe,
        const StageLayout& layout, int stage_index);

  std::unique_ptr<GpuPipelineStage::Run> forward(const float* input, const int32_t* tokens,
                                                 const int32_t* targets, int64_t batch,
                                                 int64_t seq, const LossWeights& weights,
                                                 bool training, float* output,
                                                 StageLosses& losses) override;
  void backward(GpuPipelineStage::Run& run, const float* doutput, float* dinput,
                double loss_scale, WeightGradQueue* deferred) override;
  void refresh() override;
  void update_balance_bias(double gamma) override;
  std::vector<DeviceLoadCounter> expert_load_counters() override;
  std::vector<ExpertLoad> expert_load() override;

 private:
  // Forward state of one MTP depth.
  struct MtpRun {
    typename GpuMtp<T>::Ctx module;
    typename GpuLinear<T>::Ctx head;
    cuda::DeviceArray<int32_t> ids, targets;  // [rows] tokens / targets shifted by k
    cuda::DeviceArray<float> emb, h_prev;     // [rows, hidden]
    cuda::DeviceArray<float> h_out;           // [rows, hidden] block output, h_prev of depth k+1
    cuda::DeviceArray<T> normed;              // [rows, hidden] head input
    cuda::DeviceArray<T> logits;              // [rows, vocab]
    int64_t seq = 0, rows = 0;
  };
  // Forward state of one micro-batch, released by the backward.
  struct StageRun final : GpuPipelineStage::Run {
    int64_t batch = 0, seq = 0, rows = 0;
    double mtp_weight = 0;                           // lambda / D
    cuda::DeviceArray<int32_t> ids, targets;         // [rows] (where this stage reads them)
    std::vector<cuda::DeviceArray<float>> residual;  // [stage layers + 1], [rows, hidden] each
    std::vector<typename GpuBlock<T>::Ctx> blocks;
    typename GpuRMSNorm<float, float>::Ctx final_norm;
    cuda::DeviceArray<float> normed;  // [rows, hidden] fp32
    cuda::DeviceArray<T> head_in;     // [rows, hidden] normed in T (bf16 only)
    typename GpuLinear<T>::Ctx head;
    cuda::DeviceArray<T> logits;  // [rows, vocab]
    std::vector<MtpRun> mtp;
    cuda::DeviceArray<uint8_t> loss_terms;  // LossLayout
    double* sums = nullptr;
    int64_t* valid = nullptr;
    double* balance = nullptr;
  };

  void head_forward(StageRun& r, const LossWeights& weights, bool training, int64_t moe_slot);
  void read_losses(const StageRun& r, const LossLayout& layout, StageLosses& losses);
  void head_backward(StageRun& r, double loss_scale, cuda::DeviceArray<float>& dy,
                     WeightGradQueue* deferred);
  void embedding_backward(const float* dout, const int32_t* ids, int64_t n);
  RopeInputs rope_inputs(int64_t batch, int64_t seq);
  void upload_ids(StageRun& r, const int32_t* tokens, const int32_t* targets);
  bool reads_tokens() const { return first() || (last() && !mtp_.empty()); }

  cuda::DeviceContext& ctx_;
  ModelConfig cfg_;
  float* embed_value_ = nullptr;  // model.embed_tokens.weight [vocab, hidden] (first stage, and
  float* embed_grad_ = nullptr;   // the last one with MTP modules)
  std::vector<std::unique_ptr<GpuBlock<T>>> layers_;  // layers [layer_begin, layer_end)
  GpuRMSNorm<float, float> final_norm_;               // last stage
  GpuLinear<T> head_;                                 // last stage
  std::vector<std::unique_ptr<GpuMtp<T>>> mtp_;       // last stage
  std::vector<GpuMoe<T>*> moe_layers_;  // main layers first, then MTP blocks (CPU order)
  std::vector<std::string> moe_names_;
  std::vector<int64_t> moe_layer_index_;  // the StageLosses::layer_balance slot of each

  cuda::DeviceArray<float> rope_cos_, rope_sin_;  // [rope_positions_, rope_dim/2]
  int64_t rope_positions_ = 0;
  std::map<std::pair<int64_t, int64_t>, cuda::DeviceArray<int32_t>> positions_;  // (batch, seq)
  PinnedArray<int32_t> id_staging_;    // [2*rows] tokens then targets
  PinnedArray<uint8_t> loss_staging_;  // LossLayout
};

template <class T>
Stage<T>::Stage(cuda::DeviceContext& ctx, ParamRegistry& registry, const ModelConfig& cfg,
                Recipe recipe, const StageLayout& layout, int stage_index)
    : ctx_(ctx), cfg_(cfg) {
  validate(cfg_);
  check_stage_layout(layout, cfg.num_hidden_layers, layout.stages(), "GPU pipeline stage layout");
  stage = stage_index;
  stages = layout.stages();
  std::tie(layer_begin, layer_end) = layout.range(stage);
  const int64_t d = cfg.hidden_size;
  // Registration in the CPU Transformer's order, restricted to this stage (as PipelineStage).
  if (first() || (last() && cfg.num_nextn_predict_layers > 0)) {
    if (const DeviceParam* shared = registry.find(kEmbedName)) {
      // Sharing runs one way: stage 0 registers the table, the last stage built after it on the
      // same rank reuses it (else the last stage would claim a copy that is really shared).
      FRUGAL_CHECK(!first(),
                   "GpuPipelineStage: {} is already in the registry when stage 0 is built (build "
                   "the first stage before the last one on a rank that holds both)",
                   kEmbedName);
      FRUGAL_CHECK(shared->shape == std::vector<int64_t>({cfg.vocab_size, d}) &&
                       shared->grad != nullptr,
                   "GpuPipelineStage: the registry's {} is not a trainable [{}, {}] table",
                   kEmbedName, cfg.vocab_size, d);
      embed_value_ = shared->value;  // the first stage on this rank made it: physically shared
      embed_grad_ = shared->grad;
    } else {
      const ParamRegistry::Storage embed = registry.allocate(cfg.vocab_size * d, true);
      registry.add(kEmbedName, {cfg.vocab_size, d}, ParamKind::Matrix, embed.value, embed.grad);
      embed_value_ = embed.value;
      embed_grad_ = embed.grad;
      owns_embedding_copy = !first();
    }
  }
  for (int64_t i = layer_begin; i < layer_end; ++i)
    layers_.push_back(std::make_unique<GpuBlock<T>>(registry, "model.layers." + std::to_string(i),
                                                    cfg, i, recipe));
  if (last()) {
    final_norm_ = GpuRMSNorm<float, float>(registry, "model.norm", d, cfg.rms_norm_eps);
    head_ = GpuLinear<T>(registry, d, cfg.vocab_size, dense_precision(recipe));
    head_.register_as(registry, "lm_head.weight");
    for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
      const int64_t layer = cfg.num_hidden_layers + k;  // MTP modules follow the main layers
      mtp_.push_back(std::make_unique<GpuMtp<T>>(registry, "model.layers." + std::to_string(layer),
                                                 cfg, layer, recipe));
    }
  }
  auto add_moe = [&](GpuMoe<T>* moe, int64_t layer) {
    if (moe == nullptr) return;
    moe_layers_.push_back(moe);
    moe_names_.push_back("model.layers." + std::to_string(layer) + ".mlp");
    moe_layer_index_.push_back(layer);
  };
  for (size_t i = 0; i < layers_.size(); ++i)
    add_moe(layers_[i]->moe(), layer_begin + static_cast<int64_t>(i));
  for (size_t k = 0; k < mtp_.size(); ++k)
    add_moe(mtp_[k]->block().moe(), cfg.num_hidden_layers + static_cast<int64_t>(k));
  ctx_.synchronize();
}

template <class T>
void Stage<T>::refresh() {
  for (auto& layer : layers_) layer->refresh(ctx_);
  if (last()) head_.refresh(ctx_);
  for (auto& m : mtp_) m->refresh(ctx_);
}

template <class T>
RopeInputs Stage<T>::rope_inputs(int64_t batch, int64_t seq) {
  if (seq > rope_positions_) {  // grow the table (first calls only)
    RopeTable table = make_rope_table(cfg_, seq);
    std::vector<float> cos(table.cos.begin(), table.cos.end()),
        sin(table.sin.begin(), table.sin.end());
    rope_cos_ = cuda::DeviceArray<float>(ctx_, static_cast<int64_t>(cos.size()));
    rope_sin_ = cuda::DeviceArray<float>(ctx_, static_cast<int64_t>(sin.size()));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(rope_cos_.data(), cos.data(), rope_cos_.bytes(),
                                      cudaMemcpyHostToDevice, ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(rope_sin_.data(), sin.data(), rope_sin_.bytes(),
                                      cudaMemcpyHostToDevice, ctx_.stream));
    ctx_.synchronize();  // the host vectors go out of scope
    rope_positions_ = seq;
  }
  auto key = std::make_pair(batch, seq);
  auto it = positions_.find(key);
  if (it == positions_.end()) {  // positions 0..seq-1 in every sequence (first call per shape)
    std::vector<int32_t> host(static_cast<size_t>(batch * seq));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < seq; ++t) host[b * seq + t] = static_cast<int32_t>(t);
    cuda::DeviceArray<int32_t> device(ctx_, batch * seq);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(device.data(), host.data(), device.bytes(),
                                      cudaMemcpyHostToDevice, ctx_.stream));
    ctx_.synchronize();
    it = positions_.emplace(key, std::move(device)).first;
  }
  return RopeInputs{rope_cos_.data(), rope_sin_.data(), it->second.data()};
}

template <class T>
void Stage<T>::upload_ids(StageRun& r, const int32_t* tokens, const int32_t* targets) {
  const int64_t rows = r.rows;
  if (!reads_tokens() && !last()) return;  // a middle stage reads neither
  if (id_staging_.size() < 2 * rows) id_staging_ = PinnedArray<int32_t>(2 * rows);
  if (reads_tokens()) {
    std::memcpy(id_staging_.data(), tokens, static_cast<size_t>(rows) * sizeof(int32_t));
    r.ids = cuda::DeviceArray<int32_t>(ctx_, rows);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(r.ids.data(), id_staging_.data(), r.ids.bytes(),
                                      cudaMemcpyHostToDevice, ctx_.stream));
  }
  if (last()) {
    std::memcpy(id_staging_.data() + rows, targets, static_cast<size_t>(rows) * sizeof(int32_t));
    r.targets = cuda::DeviceArray<int32_t>(ctx_, rows);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(r.targets.data(), id_staging_.data() + rows,
                                      r.targets.bytes(), cudaMemcpyHostToDevice, ctx_.stream));
  }
}

template <class T>
std::unique_ptr<GpuPipelineStage::Run> Stage<T>::forward(const float* input, const int32_t* tokens,
                                                         const int32_t* targets, int64_t batch,
                                                         int64_t seq, const LossWeights& weights,
                                                         bool training, float* output,
                                                         StageLosses& losses) {
  FRUGAL_CHECK(batch > 0 && seq > 0, "GpuPipelineStage: batch {} and seq {} must be positive",
               batch, seq);
  FRUGAL_CHECK(first() || input != nullptr, "GpuPipelineStage: stage {} needs an input", stage);
  FRUGAL_CHECK(last() || output != nullptr, "GpuPipelineStage: stage {} needs an output", stage);
  const int64_t rows = batch * seq, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  if (reads_tokens()) {
    FRUGAL_CHECK(tokens != nullptr, "GpuPipelineStage: stage {} needs the tokens", stage);
    for (int64_t i = 0; i < rows; ++i)
      FRUGAL_CHECK(tokens[i] >= 0 && tokens[i] < vocab,
                   "token id {} outside the vocabulary [0, {})", tokens[i], vocab);
  }
  if (last()) {
    FRUGAL_CHECK(targets != nullptr, "GpuPipelineStage: the last stage needs the targets");
    for (int64_t i = 0; i < rows; ++i)
      FRUGAL_CHECK(targets[i] < vocab, "target id {} outside the vocabulary [0, {})", targets[i],
                   vocab);
  }
  const cudaStream_t stream = ctx_.stream;
  auto run = std::make_unique<StageRun>();
  StageRun& r = *run;
  r.batch = batch;
  r.seq = seq;
  r.rows = rows;
  r.mtp_weight = weights.mtp_lambda /
                 static_cast<double>(std::max<int64_t>(cfg_.num_nextn_predict_layers, 1));
  upload_ids(r, tokens, targets);
  const LossLayout layout{static_cast<int64_t>(mtp_.size()),
                          static_cast<int64_t>(moe_layers_.size())};
  r.loss_terms = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(layout.bytes()));
  zero_async(ctx_, r.loss_terms.data(), layout.bytes());
  r.sums = reinterpret_cast<double*>(r.loss_terms.data() + layout.sums_offset());
  r.valid = reinterpret_cast<int64_t*>(r.loss_terms.data() + layout.valid_offset());
  r.balance = reinterpret_cast<double*>(r.loss_terms.data() + layout.balance_offset());

  // Trunk on the fp32 stream.
  r.residual.resize(layers_.size() + 1);
  r.residual[0] = cuda::DeviceArray<float>(ctx_, rows * d);  // [rows, hidden]
  if (first()) {
    cuda::ScopedSection section(stream, "embed.fwd");
    cuda::embedding_fwd<float>(r.residual[0].data(), embed_value_, r.ids.data(), rows, d, stream);
  } else {
    copy_floats(ctx_, r.residual[0].data(), input, rows * d);
  }
  const RopeInputs rope = rope_inputs(batch, seq);
  cuda::ScopedSection layers_section(stream, "layers.fwd");
  r.blocks.resize(layers_.size());
  int64_t moe_slot = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    r.residual[i + 1] = cuda::DeviceArray<float>(ctx_, rows * d);
    double* balance = layers_[i]->moe() ? r.balance + moe_slot++ : nullptr;
    layers_[i]->forward(ctx_, r.blocks[i], r.residual[i].data(), r.residual[i + 1].data(), batch,
                        seq, rope, weights.balance_alpha, training, balance);
  }
  layers_section.close();
  if (last())
    head_forward(r, weights, training, moe_slot);
  else
    copy_floats(ctx_, output, r.residual.back().data(), rows * d);

  // The loss terms leave the device in one copy.
  if (loss_staging_.size() < static_cast<int64_t>(layout.bytes()))
    loss_staging_ = PinnedArray<uint8_t>(static_cast<int64_t>(layout.bytes()));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(loss_staging_.data(), r.loss_terms.data(), layout.bytes(),
                                    cudaMemcpyDeviceToHost, stream));
  ctx_.synchronize();
  read_losses(r, layout, losses);
  return run;
}

// Final norm, head and next-token loss, then the MTP depths (last stage).
template <class T>
void Stage<T>::head_forward(StageRun& r, const LossWeights& weights, bool training,
                            int64_t moe_slot) {
  const int64_t batch = r.batch, seq = r.seq, rows = r.rows, d = cfg_.hidden_size,
                vocab = cfg_.vocab_size;
  const cudaStream_t stream = ctx_.stream;
  r.normed = cuda::DeviceArray<float>(ctx_, rows * d);
  {
    cuda::ScopedSection section(stream, "norm.fwd");
    final_norm_.forward(ctx_, r.final_norm, r.residual.back().data(), r.normed.data(), rows);
  }

  cuda::ScopedSection head_section(stream, "head+xent.fwd");
  const T* head_in = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    head_in = r.normed.data();
  } else {
    r.head_in = cuda::DeviceArray<T>(ctx_, rows * d);
    cuda::cast<float, T>(r.head_in.data(), r.normed.data(), rows * d, stream);
    head_in = r.head_in.data();
  }
  r.logits = cuda::DeviceArray<T>(ctx_, rows * vocab);  // [rows, vocab]
  head_.forward(ctx_, r.head, head_in, r.logits.data(), rows);
  {
    cuda::DeviceArray<float> token_losses(ctx_, rows);
    cuda::xent_fwd<T>(token_losses.data(), r.sums, r.valid, r.logits.data(), r.targets.data(),
                      rows, vocab, stream);
  }
  head_section.close();

  // Multi-token prediction: depth k sees positions [0, seq-k) of the previous depth.
  cuda::ScopedSection mtp_section(stream, "mtp.fwd");
  const float* prev = r.normed.data();  // [batch, prev_seq, hidden]
  int64_t prev_seq = seq;
  r.mtp.reserve(mtp_.size());
  for (size_t k = 1; k <= mtp_.size(); ++k) {
    const int64_t mseq = seq - static_cast<int64_t>(k);
    if (mseq < 1) break;
    r.mtp.emplace_back();
    MtpRun& m = r.mtp.back();
    m.seq = mseq;
    m.rows = batch * mseq;
    m.ids = cuda::DeviceArray<int32_t>(ctx_, m.rows);
    m.targets = cuda::DeviceArray<int32_t>(ctx_, m.rows);
    copy_row_blocks<int32_t>(ctx_, m.ids.data(), mseq, r.ids.data() + k, seq, mseq, 1, batch);
    copy_row_blocks<int32_t>(ctx_, m.targets.data(), mseq, r.targets.data() + k, seq, mseq, 1,
                             batch);
    m.h_prev = cuda::DeviceArray<float>(ctx_, m.rows * d);
    copy_row_blocks<float>(ctx_, m.h_prev.data(), mseq, prev, prev_seq, mseq, d, batch);
    m.emb = cuda::DeviceArray<float>(ctx_, m.rows * d);
    cuda::embedding_fwd<float>(m.emb.data(), embed_value_, m.ids.data(), m.rows, d, stream);
    m.h_out = cuda::DeviceArray<float>(ctx_, m.rows * d);
    m.normed = cuda::DeviceArray<T>(ctx_, m.rows * d);
    GpuMtp<T>& module = *mtp_[k - 1];
    double* balance = module.block().moe() ? r.balance + moe_slot++ : nullptr;
    module.forward(ctx_, m.module, m.emb.data(), m.h_prev.data(), m.h_out.data(), m.normed.data(),
                   batch, mseq, rope_inputs(batch, mseq), weights.balance_alpha, training, balance);
    cuda::ScopedSection mtp_head_section(stream, "head+xent.fwd");
    m.logits = cuda::DeviceArray<T>(ctx_, m.rows * vocab);
    head_.forward(ctx_, m.head, m.normed.data(), m.logits.data(), m.rows);
    cuda::DeviceArray<float> token_losses(ctx_, m.rows);
    cuda::xent_fwd<T>(token_losses.data(), r.sums + k, r.valid + k, m.logits.data(),
                      m.targets.data(), m.rows, vocab, stream);
    prev = m.h_out.data();
    prev_seq = mseq;
  }
}

// StageLosses from the staged loss terms, as PipelineStage<T>::forward forms them.
template <class T>
void Stage<T>::read_losses(const StageRun& r, const LossLayout& layout, StageLosses& losses) {
  std::vector<double> sums(static_cast<size_t>(1 + layout.depth_slots)),
      balance(static_cast<size_t>(layout.moe_layers));
  std::vector<int64_t> valid(sums.size());
  std::memcpy(sums.data(), loss_staging_.data() + layout.sums_offset(), sums.size() * 8);
  std::memcpy(valid.data(), loss_staging_.data() + layout.valid_offset(), valid.size() * 8);
  std::memcpy(balance.data(), loss_staging_.data() + layout.balance_offset(), balance.size() * 8);
  losses = StageLosses{};
  losses.layer_balance.assign(
      static_cast<size_t>(cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers), 0.0);
  for (size_t i = 0; i < balance.size(); ++i) losses.layer_balance[moe_layer_index_[i]] = balance[i];
  if (!last()) return;
  losses.main = valid[0] > 0 ? sums[0] / static_cast<double>(valid[0]) : 0.0;
  losses.tokens = static_cast<double>(valid[0]);
  const int64_t depths_run = static_cast<int64_t>(r.mtp.size());
  for (int64_t k = 1; k <= depths_run; ++k)
    losses.mtp += valid[k] > 0 ? sums[k] / static_cast<double>(valid[k]) : 0.0;
  losses.mtp_depths_run = static_cast<double>(depths_run);
}

template <class T>
void Stage<T>::embedding_backward(const float* dout, const int32_t* ids, int64_t n) {
  cuda::ScopedSection section(ctx_.stream, "embed.bwd");
  cuda::DeviceArray<uint8_t> workspace(
      ctx_, static_cast<int64_t>(cuda::embedding_bwd_workspace_bytes(n, cfg_.vocab_size)));
  cuda::embedding_bwd_weight<float>(embed_grad_, dout, ids, n, cfg_.hidden_size, cfg_.vocab_size,
                                    workspace.data(), ctx_.stream);
}

// Last stage: from the losses (times loss_scale) back through the head, the MTP depths and the
// final norm; dy = d(total)/d(residual.back()).
template <class T>
void Stage<T>::head_backward(StageRun& r, double loss_scale, cuda::DeviceArray<float>& dy,
                             WeightGradQueue* deferred) {
  const int64_t batch = r.batch, rows = r.rows, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  const int64_t depths_run = static_cast<int64_t>(r.mtp.size());
  const cudaStream_t stream = ctx_.stream;
  cuda::DeviceArray<float> scales(ctx_, 1 + depths_run);  // d total / d token loss, per CE term
  cuda::xent_grad_scales(scales.data(), r.valid, depths_run, loss_scale, r.mtp_weight, stream);

  // Main head: dlogits in place of the logits, then d(normed) in fp32.
  cuda::ScopedSection head_section(stream, "head+xent.bwd");
  cuda::xent_bwd<T>(r.logits.data(), r.logits.data(), r.targets.data(), rows, vocab, scales.data(),
                    stream);
  cuda::DeviceArray<float> dnormed(ctx_, rows * d);  // [rows, hidden]
  if constexpr (std::is_same_v<T, float>) {
    head_.backward(ctx_, r.head, r.logits.data(), dnormed.data(), false);
  } else {
    cuda::DeviceArray<T> dnormed_t(ctx_, rows * d);
    head_.backward(ctx_, r.head, r.logits.data(), dnormed_t.data(), false);
    cuda::cast<T, float>(dnormed.data(), dnormed_t.data(), rows * d, stream);
  }
  r.logits.reset();
  r.head_in.reset();
  head_section.close();

  // MTP depths from the deepest: each passes d(h_prev) to the depth before it.
  cuda::ScopedSection mtp_section(stream, "mtp.bwd");
  cuda::DeviceArray<float> dh_next;  // gradient w.r.t. the current depth's h_out, from depth k+1
  for (int64_t k = depths_run; k >= 1; --k) {
    MtpRun& m = r.mtp[k - 1];
    cuda::DeviceArray<T> dmnormed(ctx_, m.rows * d);
    {
      cuda::ScopedSection mtp_head_section(stream, "head+xent.bwd");
      cuda::xent_bwd<T>(m.logits.data(), m.logits.data(), m.targets.data(), m.rows, vocab,
                        scales.data() + k, stream);
      head_.backward(ctx_, m.head, m.logits.data(), dmnormed.data(), false);
    }
    m.logits.reset();
    cuda::DeviceArray<float> demb(ctx_, m.rows * d), dh_prev(ctx_, m.rows * d);
    mtp_[k - 1]->backward(ctx_, m.module, dh_next.data(), dmnormed.data(), demb.data(),
                          dh_prev.data(), loss_scale, deferred);
    embedding_backward(demb.data(), m.ids.data(), m.rows);
    // Map d(h_prev) [batch, m.seq] onto the previous depth's rows [batch, m.seq + 1].
    const int64_t prev_seq = m.seq + 1;
    cuda::DeviceArray<float> dprev(ctx_, batch * prev_seq * d);
    zero_async(ctx_, dprev.data(), dprev.bytes());
    copy_row_blocks<float>(ctx_, dprev.data(), prev_seq, dh_prev.data(), m.seq, m.seq, d, batch);
    dh_next = std::move(dprev);
    m = MtpRun{};
  }
  if (dh_next.data() != nullptr)
    cuda::axpby<float>(dnormed.data(), dh_next.data(), 1.0f, 1.0f, rows * d, stream);
  dh_next.reset();
  r.mtp.clear();
  r.normed.reset();
  mtp_section.close();

  dy = cuda::DeviceArray<float>(ctx_, rows * d);
  cuda::ScopedSection section(stream, "norm.bwd");
  final_norm_.backward(ctx_, r.final_norm, dnormed.data(), dy.data());
}

template <class T>
void Stage<T>::backward(GpuPipelineStage::Run& run, const float* doutput, float* dinput,
                        double loss_scale, WeightGradQueue* deferred) {
  auto* staged = dynamic_cast<StageRun*>(&run);
  FRUGAL_CHECK(staged != nullptr, "GpuPipelineStage::backward: the Run is not this stage's");
  StageRun& r = *staged;
  FRUGAL_CHECK(last() || doutput != nullptr, "GpuPipelineStage: stage {} needs doutput", stage);
  FRUGAL_CHECK(first() || dinput != nullptr, "GpuPipelineStage: stage {} needs dinput", stage);
  const int64_t rows = r.rows, d = cfg_.hidden_size;
  cuda::DeviceArray<float> dy_owned;  // [rows, hidden]
  const float* dy = doutput;
  if (last()) {
    head_backward(r, loss_scale, dy_owned, deferred);
    dy = dy_owned.data();
  }

  // Trunk, last layer first.
  cuda::ScopedSection layers_section(ctx_.stream, "layers.bwd");
  // Under bf16, each layer's norm backward also writes the T copy of its dx that the next layer
  // down needs for its branch's backward (none for the stage's first layer).
  cuda::DeviceArray<T> dy_t;  // [rows, hidden] dy rounded to T, or empty
  for (size_t i = layers_.size(); i-- > 0;) {
    cuda::DeviceArray<float> dx(ctx_, rows * d);
    cuda::DeviceArray<T> dx_t;
    if (!std::is_same_v<T, float> && i > 0) dx_t = cuda::DeviceArray<T>(ctx_, rows * d);
    layers_[i]->backward(ctx_, r.blocks[i], dy, dx.data(), loss_scale, deferred,
                         dy_t.size() > 0 ? dy_t.data() : nullptr,
                         dx_t.size() > 0 ? dx_t.data() : nullptr);
    r.residual[i + 1].reset();
    dy_owned = std::move(dx);
    dy = dy_owned.data();
    dy_t = std::move(dx_t);
    // Layer i's weight gradients are queued (not deferred): final for this backward.
    if (gradients_final && deferred == nullptr)
      gradients_final(layer_begin + static_cast<int64_t>(i));
  }
  layers_section.close();
  if (first())
    embedding_backward(dy, r.ids.data(), rows);
  else
    copy_floats(ctx_, dinput, dy, rows * d);
  if (gradients_final && deferred == nullptr)
    gradients_final(GpuPipelineStage::kAllOtherGradients);
}

template <class T>
void Stage<T>::update_balance_bias(double gamma) {
  for (GpuMoe<T>* moe : moe_layers_) {
    if (moe->has_bias())
      moe->update_bias(ctx_, gamma);
    else
      moe->reset_load(ctx_);  // routers without a selection bias have nothing to update
  }
}

template <class T>
std::vector<DeviceLoadCounter> Stage<T>::expert_load_counters() {
  std::vector<DeviceLoadCounter> out;
  for (GpuMoe<T>* moe : moe_layers_) out.push_back(moe->load_counter());
  return out;
}

template <class T>
std::vector<ExpertLoad> Stage<T>::expert_load() {
  std::vector<ExpertLoad> out;
  for (size_t i = 0; i < moe_layers_.size(); ++i) {
    const std::vector<int64_t> load = moe_layers_[i]->load(ctx_);
    double total = 0, mx = 0;
    for (int64_t c : load) {
      total += static_cast<double>(c);
      mx = std::max(mx, static_cast<double>(c));
    }
    const double mean = load.empty() ? 0.0 : total / static_cast<double>(load.size());
    out.push_back({moe_names_[i], mean > 0 ? mx / mean : 0.0});
  }
  return out;
}

}  // namespace

struct GpuPipelineStage::Impl {
  std::unique_ptr<StageBody> body;
  cuda::DeviceContext* ctx = nullptr;
};

GpuPipelineStage::GpuPipelineStage(cuda::DeviceContext& ctx, ParamRegistry& registry,
                                   const ModelConfig& cfg, Recipe recipe, const StageLayout& layout,
                                   int stage)
    : impl_(std::make_unique<Impl>()) {
  impl_->ctx = &ctx;
  if (recipe == Recipe::Fp32)
    impl_->body = std::make_unique<Stage<float>>(ctx, registry, cfg, recipe, layout, stage);
  else
    impl_->body = std::make_unique<Stage<bf16>>(ctx, registry, cfg, recipe, layout, stage);
}

GpuPipelineStage::GpuPipelineStage(cuda::DeviceContext& ctx, ParamRegistry& registry,
                                   const ModelConfig& cfg, Recipe recipe, int stage, int stages)
    : GpuPipelineStage(ctx, registry, cfg, recipe,
                       even_stage_layout(cfg.num_hidden_layers, stages), stage) {}

GpuPipelineStage::~GpuPipelineStage() = default;

std::unique_ptr<GpuPipelineStage::Run> GpuPipelineStage::forward(
    const float* input, const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
    const LossWeights& weights, bool training, float* output, StageLosses& losses) {
  return impl_->body->forward(input, tokens, targets, batch, seq, weights, training, output,
                              losses);
}

void GpuPipelineStage::backward(std::unique_ptr<Run>& run, const float* doutput, float* dinput,
                                double loss_scale) {
  backward_input(run, doutput, dinput, loss_scale, /*defer_weights=*/false);
}

void GpuPipelineStage::backward_input(std::unique_ptr<Run>& run, const float* doutput,
                                      float* dinput, double loss_scale, bool defer_weights) {
  FRUGAL_CHECK(run != nullptr, "GpuPipelineStage::backward: no forward Run (already released?)");
  FRUGAL_CHECK(run->weight_grads.empty(),
               "GpuPipelineStage::backward: the Run's input half already ran (its W is pending)");
  if (!defer_weights) {
    impl_->body->backward(*run, doutput, dinput, loss_scale, nullptr);
    run.reset();
    return;
  }
  WeightGradQueue queue;
  impl_->body->backward(*run, doutput, dinput, loss_scale, &queue);
  // Only the queued GEMMs outlive B: the forward state goes now.
  run = std::make_unique<Run>();
  run->weight_grads = std::move(queue);
}

int64_t GpuPipelineStage::backward_weight(std::unique_ptr<Run>& run) {
  FRUGAL_CHECK(run != nullptr,
               "GpuPipelineStage::backward_weight: no Run (its backward_input did not defer, or "
               "the W already ran)");
  const int64_t gemms = run->weight_grads.run(*impl_->ctx);
  run.reset();
  return gemms;
}

void GpuPipelineStage::set_gradients_final_callback(std::function<void(int64_t layer)> callback) {
  impl_->body->gradients_final = std::move(callback);
}

void GpuPipelineStage::refresh() { impl_->body->refresh(); }
void GpuPipelineStage::update_balance_bias(double gamma) {
  impl_->body->update_balance_bias(gamma);
}
std::vector<DeviceLoadCounter> GpuPipelineStage::expert_load_counters() {
  return impl_->body->expert_load_counters();
}
std::vector<ExpertLoad> GpuPipelineStage::expert_load() { return impl_->body->expert_load(); }
int GpuPipelineStage::stage() const { return impl_->body->stage; }
bool GpuPipelineStage::first() const { return impl_->body->first(); }
bool GpuPipelineStage::last() const { return impl_->body->last(); }
int64_t GpuPipelineStage::layer_begin() const { return impl_->body->layer_begin; }
int64_t GpuPipelineStage::layer_end() const { return impl_->body->layer_end; }
bool GpuPipelineStage::owns_embedding_copy() const { return impl_->body->owns_embedding_copy; }

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
