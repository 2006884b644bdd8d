// A pipeline stage of the CPU model (see pipeline_stage.h). The forward and backward bodies follow
// Transformer<T> (model/transformer.cc) step by step, restricted to this stage's modules.
#include "parallel/pipeline_stage.h"

#include <algorithm>

#include "kernels/embedding/embedding.h"
#include "kernels/xent/xent.h"

namespace frugal {

std::pair<int64_t, int64_t> layers_of_stage(int64_t layers, int stages, int stage) {
  FRUGAL_CHECK(stages >= 1 && stage >= 0 && stage < stages, "pipeline: stage {} of {} stages",
               stage, stages);
  FRUGAL_CHECK(layers >= stages,
               "pipeline: {} decoder layers cannot fill {} stages (every stage needs at least one; "
               "lower train.pp or use more layers)",
               layers, stages);
  const int64_t base = layers / stages, extra = layers % stages;
  const int64_t begin = stage * base + std::min<int64_t>(stage, extra);
  return {begin, begin + base + (stage < extra ? 1 : 0)};
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

template <class T>
PipelineStage<T>::PipelineStage(ParamStore<T>& store, const ModelConfig& cfg, int stage,
                                int stages, ExpertShard experts)
    : cfg_(cfg), stage_(stage), stages_(stages) {
  validate(cfg_);
  std::tie(layer_begin_, layer_end_) = layers_of_stage(cfg.num_hidden_layers, stages, stage);
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

  // Multi-token prediction, as Transformer<T>::forward: depth k sees positions [0, seq-k).
  ctx.mtp.assign(mtp_.size(), typename Transformer<T>::MtpCtx{});
  std::vector<T> prev = std::move(normed);  // [batch, prev_seq, hidden]
  int64_t prev_seq = seq;
  int64_t depths_run = 0;
  for (size_t k = 1; k <= mtp_.size(); ++k) {
    auto& m = ctx.mtp[k - 1];
    m.seq = seq - static_cast<int64_t>(k);
    if (m.seq < 1) break;
    const int64_t mrows = batch * m.seq;
    std::vector<int32_t> shifted(mrows);
    std::vector<T> h_prev(mrows * d);
    m.targets.resize(mrows);
    mtp_depth_inputs(shifted.data(), m.targets.data(), h_prev.data(), tokens, targets,
                     prev.data(), batch, seq, prev_seq, static_cast<int64_t>(k), d);
    std::vector<T> emb(mrows * d), h_out(mrows * d), mnormed(mrows * d);
    embed_forward(m.embed, shifted.data(), emb.data(), mrows);
    losses.layer_balance[cfg_.num_hidden_layers + static_cast<int64_t>(k) - 1] =
        mtp_[k - 1]->forward(m.module, emb.data(), h_prev.data(), h_out.data(), mnormed.data(),
                             batch, m.seq, weights.balance_alpha, training);
    m.logits.resize(mrows * vocab);
    head_->forward(m.head, mnormed.data(), m.logits.data(), mrows);
    std::vector<T> mlosses(mrows);
    double msum = cpu::xent_fwd(mlosses.data(), m.logits.data(), m.targets.data(), mrows, vocab,
                                &m.valid);
    losses.mtp += m.valid > 0 ? msum / static_cast<double>(m.valid) : 0.0;
    ++depths_run;
    prev = std::move(h_out);
    prev_seq = m.seq;
  }
  ctx.mtp.resize(depths_run);
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
    std::vector<T> dh_next;  // gradient w.r.t. the h_out of the current depth, from depth k+1
    for (int64_t k = static_cast<int64_t>(ctx.mtp.size()); k >= 1; --k) {
      auto& m = ctx.mtp[k - 1];
      const int64_t mrows = ctx.batch * m.seq;
      std::vector<T> mdlogits(mrows * vocab), dmnormed(mrows * d), demb(mrows * d),
          dh_prev(mrows * d);
      double scale = m.valid > 0 ? loss_scale * ctx.weights.mtp_lambda / depth /
                                       static_cast<double>(m.valid)
                                 : 0.0;
      cpu::xent_bwd(mdlogits.data(), m.logits.data(), m.targets.data(), mrows, vocab, scale);
      head_->backward_input(m.head, mdlogits.data(), dmnormed.data());
      mtp_[k - 1]->backward_input(m.module, dh_next.empty() ? nullptr : dh_next.data(),
                                  dmnormed.data(), demb.data(), dh_prev.data(), loss_scale);
      m.embed.dout = std::move(demb);  // what Embedding::backward_input keeps
      const int64_t prev_seq = m.seq + 1;
      std::vector<T> dprev(ctx.batch * prev_seq * d, T(0));
      for (int64_t b = 0; b < ctx.batch; ++b)
        for (int64_t i = 0; i < m.seq; ++i)
          std::copy_n(dh_prev.begin() + (b * m.seq + i) * d, d,
                      dprev.begin() + (b * prev_seq + i) * d);
      dh_next = std::move(dprev);
    }
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
