// GpuModel<T>: the GPU training model (see gpu_model.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_model.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
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
namespace {

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

template <class T>
class GpuModel final : public GpuModelBase {
 public:
  GpuModel(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe, Communicator* ep_comm);

  Losses run(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
             const LossWeights& weights, bool training, double loss_scale) override;
  void refresh() override;
  void update_balance_bias(double gamma) override;
  std::vector<ExpertLoad> expert_load() override;
  std::vector<DeviceLoadCounter> expert_load_counters() override;
  ParamRegistry& registry() override { return registry_; }

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
  struct Run {
    int64_t batch = 0, seq = 0, rows = 0;
    cuda::DeviceArray<int32_t> ids, targets;         // [rows]
    std::vector<cuda::DeviceArray<float>> residual;  // [layers+1] stream, [rows, hidden] each
    std::vector<typename GpuBlock<T>::Ctx> blocks;
    typename GpuRMSNorm<float, float>::Ctx final_norm;
    cuda::DeviceArray<float> normed;  // [rows, hidden] fp32
    cuda::DeviceArray<T> head_in;     // [rows, hidden] normed in T (bf16 only)
    typename GpuLinear<T>::Ctx head;
    cuda::DeviceArray<T> logits;  // [rows, vocab]
    std::vector<MtpRun> mtp;
    cuda::DeviceArray<double> sums;     // [1+D] CE sums: main, then depths
    cuda::DeviceArray<int64_t> valid;   // [1+D] valid targets
    cuda::DeviceArray<double> balance;  // [MoE layers] balance losses
  };

  void forward(Run& run, const LossWeights& weights, bool training);
  void backward(Run& run, double loss_scale, double mtp_weight);
  RopeInputs rope_inputs(int64_t batch, int64_t seq);
  void upload_ids(Run& run, const int32_t* tokens, const int32_t* targets);

  cuda::DeviceContext& ctx_;
  ModelConfig cfg_;
  ParamRegistry registry_;
  ParamRegistry::Storage embed_;  // model.embed_tokens.weight [vocab, hidden]
  std::vector<std::unique_ptr<GpuBlock<T>>> layers_;
  GpuRMSNorm<float, float> final_norm_;
  GpuLinear<T> head_;
  std::vector<std::unique_ptr<GpuMtp<T>>> mtp_;
  std::vector<GpuMoe<T>*> moe_layers_;  // main layers first, then MTP blocks (CPU order)
  std::vector<std::string> moe_names_;

  cuda::DeviceArray<float> rope_cos_, rope_sin_;  // [rope_positions_, rope_dim/2]
  int64_t rope_positions_ = 0;
  std::map<std::pair<int64_t, int64_t>, cuda::DeviceArray<int32_t>> positions_;  // (batch, seq)
  PinnedArray<int32_t> id_staging_;    // [2*rows] tokens then targets
  PinnedArray<uint8_t> loss_staging_;  // one DeviceLosses
};

template <class T>
GpuModel<T>::GpuModel(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                      Communicator* ep_comm)
    : ctx_(ctx), cfg_(cfg), registry_(ctx) {
  validate(cfg_);
  ExpertParallelScope expert_parallel(ep_comm);  // the MoE layers built below hold their EP slice
  const int64_t d = cfg.hidden_size;
  // Registration in the CPU Transformer's order.
  embed_ = registry_.allocate(cfg.vocab_size * d, /*trainable=*/true);
  registry_.add("model.embed_tokens.weight", {cfg.vocab_size, d}, ParamKind::Matrix, embed_.value,
                embed_.grad);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    layers_.push_back(std::make_unique<GpuBlock<T>>(registry_, "model.layers." + std::to_string(i),
                                                    cfg, i, recipe));
  final_norm_ = GpuRMSNorm<float, float>(registry_, "model.norm", d, cfg.rms_norm_eps);
  head_ = GpuLinear<T>(registry_, d, cfg.vocab_size, dense_precision(recipe));
  head_.register_as(registry_, "lm_head.weight");
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
    const int64_t layer = cfg.num_hidden_layers + k;  // MTP modules follow the main layers
    mtp_.push_back(std::make_unique<GpuMtp<T>>(registry_, "model.layers." + std::to_string(layer),
                                               cfg, layer, recipe));
  }
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    if (layers_[i]->moe()) {
      moe_layers_.push_back(layers_[i]->moe());
      moe_names_.push_back("model.layers." + std::to_string(i) + ".mlp");
    }
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k)
    if (mtp_[k]->block().moe()) {
      moe_layers_.push_back(mtp_[k]->block().moe());
      moe_names_.push_back("model.layers." + std::to_string(cfg.num_hidden_layers + k) + ".mlp");
    }
  loss_staging_ = PinnedArray<uint8_t>(sizeof(cuda::DeviceLosses));
  ctx_.synchronize();
}

template <class T>
void GpuModel<T>::refresh() {
  for (auto& layer : layers_) layer->refresh(ctx_);
  head_.refresh(ctx_);
  for (auto& m : mtp_) m->refresh(ctx_);
}

template <class T>
RopeInputs GpuModel<T>::rope_inputs(int64_t batch, int64_t seq) {
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
void GpuModel<T>::upload_ids(Run& run, const int32_t* tokens, const int32_t* targets) {
  const int64_t rows = run.rows;
  if (id_staging_.size() < 2 * rows) id_staging_ = PinnedArray<int32_t>(2 * rows);
  std::memcpy(id_staging_.data(), tokens, static_cast<size_t>(rows) * sizeof(int32_t));
  std::memcpy(id_staging_.data() + rows, targets, static_cast<size_t>(rows) * sizeof(int32_t));
  run.ids = cuda::DeviceArray<int32_t>(ctx_, rows);
  run.targets = cuda::DeviceArray<int32_t>(ctx_, rows);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(run.ids.data(), id_staging_.data(), run.ids.bytes(),
                                    cudaMemcpyHostToDevice, ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(run.targets.data(), id_staging_.data() + rows,
                                    run.targets.bytes(), cudaMemcpyHostToDevice, ctx_.stream));
}

template <class T>
Losses GpuModel<T>::run(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                        const LossWeights& weights, bool training, double loss_scale) {
  FRUGAL_CHECK(batch > 0 && seq > 0, "GpuTransformer: batch {} and seq {} must be positive", batch,
               seq);
  const int64_t rows = batch * seq, vocab = cfg_.vocab_size;
  for (int64_t i = 0; i < rows; ++i) {
    FRUGAL_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "token id {} outside the vocabulary [0, {})",
                 tokens[i], vocab);
    FRUGAL_CHECK(targets[i] < vocab, "target id {} outside the vocabulary [0, {})", targets[i],
                 vocab);
  }
  const int64_t depth_slots = static_cast<int64_t>(mtp_.size());
  const double mtp_weight =
      weights.mtp_lambda / static_cast<double>(std::max<int64_t>(depth_slots, 1));

  Run r;
  r.batch = batch;
  r.seq = seq;
  r.rows = rows;
  upload_ids(r, tokens, targets);
  r.sums = cuda::DeviceArray<double>(ctx_, 1 + depth_slots);
  r.valid = cuda::DeviceArray<int64_t>(ctx_, 1 + depth_slots);
  r.balance = cuda::DeviceArray<double>(ctx_, std::max<int64_t>(1, moe_layers_.size()));
  zero_async(ctx_, r.sums.data(), r.sums.bytes());
  zero_async(ctx_, r.valid.data(), r.valid.bytes());
  zero_async(ctx_, r.balance.data(), r.balance.bytes());

  forward(r, weights, training);
  const int64_t depths_run = static_cast<int64_t>(r.mtp.size());
  cuda::DeviceArray<cuda::DeviceLosses> out(ctx_, 1);
  cuda::finalize_losses(out.data(), r.sums.data(), r.valid.data(), depths_run, r.balance.data(),
                        static_cast<int64_t>(moe_layers_.size()), mtp_weight, ctx_.stream);
  if (training) backward(r, loss_scale, mtp_weight);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(loss_staging_.data(), out.data(), sizeof(cuda::DeviceLosses),
                                    cudaMemcpyDeviceToHost, ctx_.stream));
  ctx_.synchronize();
  cuda::DeviceLosses device_losses;
  std::memcpy(&device_losses, loss_staging_.data(), sizeof device_losses);
  Losses losses;
  losses.total = device_losses.total;
  losses.main = device_losses.main;
  losses.mtp = device_losses.mtp;
  losses.balance = device_losses.balance;
  losses.tokens = device_losses.tokens;
  return losses;
}

template <class T>
void GpuModel<T>::forward(Run& r, const LossWeights& weights, bool training) {
  const int64_t batch = r.batch, seq = r.seq, rows = r.rows, d = cfg_.hidden_size,
                vocab = cfg_.vocab_size;
  const cudaStream_t stream = ctx_.stream;
  const RopeInputs rope = rope_inputs(batch, seq);

  // Trunk on the fp32 stream.
  r.residual.resize(layers_.size() + 1);
  r.residual[0] = cuda::DeviceArray<float>(ctx_, rows * d);  // [rows, hidden]
  {
    cuda::ScopedSection section(stream, "embed.fwd");
    cuda::embedding_fwd<float>(r.residual[0].data(), embed_.value, r.ids.data(), rows, d, stream);
  }
  cuda::ScopedSection layers_section(stream, "layers.fwd");
  r.blocks.resize(layers_.size());
  int64_t moe_slot = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    r.residual[i + 1] = cuda::DeviceArray<float>(ctx_, rows * d);
    double* balance = layers_[i]->moe() ? r.balance.data() + moe_slot++ : nullptr;
    layers_[i]->forward(ctx_, r.blocks[i], r.residual[i].data(), r.residual[i + 1].data(), batch,
                        seq, rope, weights.balance_alpha, training, balance);
  }
  layers_section.close();
  r.normed = cuda::DeviceArray<float>(ctx_, rows * d);
  {
    cuda::ScopedSection section(stream, "norm.fwd");
    final_norm_.forward(ctx_, r.final_norm, r.residual.back().data(), r.normed.data(), rows);
  }

  // Head and next-token loss.
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
    cuda::xent_fwd<T>(token_losses.data(), r.sums.data(), r.valid.data(), r.logits.data(),
                      r.targets.data(), rows, vocab, stream);
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
    cuda::embedding_fwd<float>(m.emb.data(), embed_.value, m.ids.data(), m.rows, d, stream);
    m.h_out = cuda::DeviceArray<float>(ctx_, m.rows * d);
    m.normed = cuda::DeviceArray<T>(ctx_, m.rows * d);
    GpuMtp<T>& module = *mtp_[k - 1];
    double* balance = module.block().moe() ? r.balance.data() + moe_slot++ : nullptr;
    module.forward(ctx_, m.module, m.emb.data(), m.h_prev.data(), m.h_out.data(), m.normed.data(),
                   batch, mseq, rope_inputs(batch, mseq), weights.balance_alpha, training, balance);
    cuda::ScopedSection mtp_head_section(stream, "head+xent.fwd");
    m.logits = cuda::DeviceArray<T>(ctx_, m.rows * vocab);
    head_.forward(ctx_, m.head, m.normed.data(), m.logits.data(), m.rows);
    cuda::DeviceArray<float> token_losses(ctx_, m.rows);
    cuda::xent_fwd<T>(token_losses.data(), r.sums.data() + k, r.valid.data() + k, m.logits.data(),
                      m.targets.data(), m.rows, vocab, stream);
    prev = m.h_out.data();
    prev_seq = mseq;
  }
}

template <class T>
void GpuModel<T>::backward(Run& r, double loss_scale, double mtp_weight) {
  const int64_t batch = r.batch, rows = r.rows, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  const int64_t depths_run = static_cast<int64_t>(r.mtp.size());
  const cudaStream_t stream = ctx_.stream;
  cuda::DeviceArray<float> scales(ctx_, 1 + depths_run);  // d total / d token loss, per CE term
  cuda::xent_grad_scales(scales.data(), r.valid.data(), depths_run, loss_scale, mtp_weight, stream);

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

  auto embedding_backward = [&](const float* dout, const int32_t* ids, int64_t n) {
    cuda::ScopedSection section(stream, "embed.bwd");
    cuda::DeviceArray<uint8_t> workspace(
        ctx_, static_cast<int64_t>(cuda::embedding_bwd_workspace_bytes(n, vocab)));
    cuda::embedding_bwd_weight<float>(embed_.grad, dout, ids, n, d, vocab, workspace.data(),
                                      stream);
  };
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
                          dh_prev.data(), loss_scale);
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

  // Trunk, last layer first.
  cuda::DeviceArray<float> dy(ctx_, rows * d);
  {
    cuda::ScopedSection section(stream, "norm.bwd");
    final_norm_.backward(ctx_, r.final_norm, dnormed.data(), dy.data());
  }
  dnormed.reset();
  cuda::ScopedSection layers_section(stream, "layers.bwd");
  for (size_t i = layers_.size(); i-- > 0;) {
    cuda::DeviceArray<float> dx(ctx_, rows * d);
    layers_[i]->backward(ctx_, r.blocks[i], dy.data(), dx.data(), loss_scale);
    r.residual[i + 1].reset();
    dy = std::move(dx);
  }
  layers_section.close();
  embedding_backward(dy.data(), r.ids.data(), rows);
  r = Run{};
}

template <class T>
void GpuModel<T>::update_balance_bias(double gamma) {
  for (GpuMoe<T>* moe : moe_layers_) {
    if (moe->has_bias())
      moe->update_bias(ctx_, gamma);
    else
      moe->reset_load(ctx_);  // routers without a selection bias have nothing to update
  }
}

template <class T>
std::vector<DeviceLoadCounter> GpuModel<T>::expert_load_counters() {
  std::vector<DeviceLoadCounter> out;
  for (GpuMoe<T>* moe : moe_layers_) out.push_back(moe->load_counter());
  return out;
}

template <class T>
std::vector<ExpertLoad> GpuModel<T>::expert_load() {
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

std::unique_ptr<GpuModelBase> make_gpu_model(cuda::DeviceContext& ctx, const ModelConfig& cfg,
                                             Recipe recipe, Communicator* ep_comm) {
  if (recipe == Recipe::Fp32) return std::make_unique<GpuModel<float>>(ctx, cfg, recipe, ep_comm);
  return std::make_unique<GpuModel<bf16>>(ctx, cfg, recipe, ep_comm);
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
