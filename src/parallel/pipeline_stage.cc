// A pipeline stage of the CPU model (see pipeline_stage.h). The forward and backward bodies follow
// Transformer<T> (model/transformer.cc) step by step, restricted to this stage's modules.
#include "parallel/pipeline_stage.h"

#include <algorithm>

#include "kernels/embedding/embedding.h"
#include "kernels/xent/xent.h"
#include "model/mtp_chain.h"

namespace frugal {

std::pair<int64_t, int64_t> layers_of_stage(int64_t layers, int stages, int stage) {
  FRUGAL_CHECK(stages >= 1 && stage >= 0 && stage < stages, "pipeline: stage {} of {} stages",
               stage, stages);
  return even_stage_layout(layers, stages).range(stage);
}

Losses finish_losses(const StageLosses& all, const LossWeights& weights, int64_t mtp_depth) {
  Losses losses;
  losses.main = all.main;
  losses.tokens = static_cast<int64_t>(all.tokens);
  for (double b : all.layer_balance) losses.balance += b;  // layer order, as Transformer sums
  losses.mtp = all.mtp;
  if (all.mtp_depths_run > 0) losses.mtp /= all.mtp_depths_run;
  const double depth = static_cast<double>(std::max<int64_t>(mtp_depth, 1));
  const double mtp_term = weights.mtp_lambda / depth * losses.mtp * all.mtp_depths_run;
  losses.total = losses.main + mtp_term + losses.balance;
  return losses;
}

namespace {

// The layer index of a MoE name "model.layers.{i}.mlp".
int64_t moe_layer_index(const std::string& name) {
  const std::string prefix = "model.layers.";
  FRUGAL_CHECK(name.rfind(prefix, 0) == 0, "unexpected MoE layer name {}", name);
  return std::stoll(name.substr(prefix.size()));
}

}  // namespace

std::vector<size_t> stage_moe_layers(const std::vector<std::string>& moe_layer_names,
                                     int64_t layer_begin, int64_t layer_end, bool last,
                                     int64_t main_layers) {
  std::vector<size_t> held;
  for (size_t j = 0; j < moe_layer_names.size(); ++j) {
    const int64_t index = moe_layer_index(moe_layer_names[j]);
    if (index >= layer_begin && index < layer_end) held.push_back(j);
  }
  if (last)
    for (size_t j = 0; j < moe_layer_names.size(); ++j)
      if (moe_layer_index(moe_layer_names[j]) >= main_layers) held.push_back(j);
  return held;
}

template <class T>
PipelineStage<T>::PipelineStage(ParamStore<T>& store, const ModelConfig& cfg, int stage,
                                int stages, ExpertShard experts)
    : PipelineStage(store, cfg, even_stage_layout(cfg.num_hidden_layers, stages), stage,
                    experts) {}

template <class T>
PipelineStage<T>::PipelineStage(ParamStore<T>& store, const ModelConfig& cfg,
                                const StageLayout& layout, int stage, ExpertShard experts)
    : cfg_(cfg), stage_(stage), stages_(layout.stages()) {
  validate(cfg_);
  check_stage_layout(layout, cfg.num_hidden_layers, stages_, "pipeline stage layout");
  std::tie(layer_begin_, layer_end_) = layout.range(stage);
  const std::string embed_name = "model.embed_tokens.weight";
  if (first() || (last() && cfg.num_nextn_predict_layers > 0)) {
    embed_table_ = store.find(embed_name);  // shared when this rank's first stage made it
    if (embed_table_ == nullptr)
      embed_table_ = &store.add(embed_name, {cfg.vocab_size, cfg.hidden_size}, ParamKind::Matrix);
  }
  for (int64_t i = layer_begin_; i < layer_end_; ++i)
    layers_.push_back(
        std::make_unique<Block<T>>(store, "model.layers." + std::to_string(i), cfg, i, experts));
  if (last()) {
    final_norm_ = std::make_unique<RMSNorm<T>>(store, "model.norm", cfg.hidden_size, cfg.rms_norm_eps);
    head_ = std::make_unique<Linear<T>>(store, "lm_head", cfg.hidden_size, cfg.vocab_size);
    for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
      const int64_t layer = cfg.num_hidden_layers + k;
      mtp_.push_back(std::make_unique<MtpModule<T>>(store, "model.layers." + std::to_string(layer),
                                                    cfg, layer, experts));
    }
  }
}

template <class T>
void PipelineStage<T>::embed_forward(typename Embedding<T>::Ctx& ctx, const int32_t* ids, T* out,
                                     int64_t n) const {
  for (int64_t i = 0; i < n; ++i)
    FRUGAL_CHECK(ids[i] >= 0 && ids[i] < cfg_.vocab_size,
                 "token id {} outside the vocabulary [0, {})", ids[i], cfg_.vocab_size);
  ctx.ids.assign(ids, ids + n);
  cpu::embedding_fwd(out, embed_table_->data(), ids, n, cfg_.hidden_size);
}

template <class T>
void PipelineStage<T>::embed_backward_weight(typename Embedding<T>::Ctx& ctx) const {
  cpu::embedding_bwd_weight(embed_table_->grad_data(), ctx.dout.data(), ctx.ids.data(),
                            static_cast<int64_t>(ctx.ids.size()), cfg_.hidden_size);
  ctx = typename Embedding<T>::Ctx{};
}

template <class T>
StageLosses PipelineStage<T>::forward(Ctx& ctx, const T* input, const int32_t* tokens,
                                      const int32_t* targets, int64_t batch, int64_t seq,
                                      const LossWeights& weights, bool training,
                                      std::vector<T>& output) const {
  const int64_t rows = batch * seq, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.weights = weights;
  StageLosses losses;
  losses.layer_balance.assign(cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers, 0.0);

  std::vector<T> x(rows * d), y(rows * d);  // [rows, hidden]
  if (first())
    embed_forward(ctx.embed, tokens, x.data(), rows);
  else
    std::copy_n(input, rows * d, x.begin());
  ctx.blocks.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    losses.layer_balance[layer_begin_ + static_cast<int64_t>(i)] = layers_[i]->forward(
        ctx.blocks[i], x.data(), y.data(), batch, seq, weights.balance_alpha, training);
    std::swap(x, y);
  }
  if (!last()) {
    output = std::move(x);
    return losses;
  }
  output.clear();

  for (int64_t i = 0; i < rows; ++i)
    FRUGAL_CHECK(targets[i] < vocab, "target id {} outside the vocabulary [0, {})", targets[i],
                 vocab);
  std::vector<T> normed(rows * d);
  final_norm_->forward(ctx.final_norm, x.data(), normed.data(), rows);
  ctx.targets.assign(targets, targets + rows);
  ctx.logits.resize(rows * vocab);  // [rows, vocab]
  head_->forward(ctx.head, normed.data(), ctx.logits.data(), rows);
  std::vector<T> token_losses(rows);
  double sum = cpu::xent_fwd(token_losses.data(), ctx.logits.data(), targets, rows, vocab, &ctx.valid);
  losses.main = ctx.valid > 0 ? sum / static_cast<double>(ctx.valid) : 0.0;
  losses.tokens = static_cast<double>(ctx.valid);

  // Multi-token prediction, as Transformer<T>::forward (model/mtp_chain.h).
  const MtpChainForward chain = mtp_chain_forward<T>(
      ctx.mtp, mtp_, *head_,
      [this](typename Embedding<T>::Ctx& ectx, const int32_t* ids, T* out, int64_t n) {
        embed_forward(ectx, ids, out, n);
      },
      std::move(normed), tokens, targets, batch, seq, d, vocab, weights.balance_alpha, training);
  const int64_t depths_run = static_cast<int64_t>(chain.balance.size());
  for (int64_t k = 1; k <= depths_run; ++k)
    losses.layer_balance[cfg_.num_hidden_layers + k - 1] = chain.balance[k - 1];
  losses.mtp = chain.ce_sum;
  losses.mtp_depths_run = static_cast<double>(depths_run);
  return losses;
}

template <class T>
void PipelineStage<T>::backward_input(Ctx& ctx, const T* doutput, std::vector<T>& dinput,
                                      double loss_scale) const {
  const int64_t rows = ctx.batch * ctx.seq, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  std::vector<T> dx(rows * d), dy(rows * d);  // [rows, hidden]
  if (last()) {
    const double depth = static_cast<double>(std::max<size_t>(mtp_.size(), 1));
    std::vector<T> dlogits(rows * vocab), dnormed(rows * d);
    double main_scale = ctx.valid > 0 ? loss_scale / static_cast<double>(ctx.valid) : 0.0;
    cpu::xent_bwd(dlogits.data(), ctx.logits.data(), ctx.targets.data(), rows, vocab, main_scale);
    head_->backward_input(ctx.head, dlogits.data(), dnormed.data());
    const std::vector<T> dh_next = mtp_chain_backward<T>(
        ctx.mtp, mtp_, *head_, ctx.batch, d, vocab, loss_scale, ctx.weights.mtp_lambda, depth);
    if (!dh_next.empty())
      for (int64_t i = 0; i < rows * d; ++i) dnormed[i] += dh_next[i];
    final_norm_->backward_input(ctx.final_norm, dnormed.data(), dy.data());
  } else {
    std::copy_n(doutput, rows * d, dy.begin());
  }
  for (size_t i = layers_.size(); i-- > 0;) {
    layers_[i]->backward_input(ctx.blocks[i], dy.data(), dx.data(), loss_scale);
    std::swap(dx, dy);
  }
  if (first()) {
    ctx.embed.dout = std::move(dy);
    dinput.clear();
  } else {
    dinput = std::move(dy);
  }
}

template <class T>
void PipelineStage<T>::backward_weight(Ctx& ctx) const {
  if (last()) {
    head_->backward_weight(ctx.head);
    for (size_t k = 0; k < ctx.mtp.size(); ++k) {
      head_->backward_weight(ctx.mtp[k].head);
      mtp_[k]->backward_weight(ctx.mtp[k].module);
      embed_backward_weight(ctx.mtp[k].embed);
    }
    final_norm_->backward_weight(ctx.final_norm);
  }
  for (size_t i = layers_.size(); i-- > 0;) layers_[i]->backward_weight(ctx.blocks[i]);
  if (first()) embed_backward_weight(ctx.embed);
}

template <class T>
std::vector<MoE<T>*> PipelineStage<T>::moe_layers() const {
  std::vector<MoE<T>*> out;
  for (auto& layer : layers_)
    if (layer->moe()) out.push_back(layer->moe());
  for (auto& m : mtp_)
    if (m->block().moe()) out.push_back(m->block().moe());
  return out;
}

template class PipelineStage<float>;
template class PipelineStage<double>;

}  // namespace frugal
