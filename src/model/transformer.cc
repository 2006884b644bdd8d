#include "model/transformer.h"

#include <algorithm>

#include "core/rng.h"
#include "kernels/xent/xent.h"
#include "model/mtp_chain.h"

namespace frugal {

template <class T>
Transformer<T>::Transformer(const ModelConfig& cfg, ExpertShard experts) : cfg_(cfg) {
  validate(cfg_);
  embed_ = Embedding<T>(store_, "model.embed_tokens", cfg.vocab_size, cfg.hidden_size);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    layers_.push_back(
        std::make_unique<Block<T>>(store_, "model.layers." + std::to_string(i), cfg, i, experts));
  final_norm_ = RMSNorm<T>(store_, "model.norm", cfg.hidden_size, cfg.rms_norm_eps);
  head_ = Linear<T>(store_, "lm_head", cfg.hidden_size, cfg.vocab_size);
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
    int64_t layer = cfg.num_hidden_layers + k;  // MTP modules follow the main layers (spec §9.1)
    mtp_.push_back(std::make_unique<MtpModule<T>>(store_, "model.layers." + std::to_string(layer),
                                                  cfg, layer, experts));
  }
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    if (layers_[i]->moe()) moe_names_.push_back("model.layers." + std::to_string(i) + ".mlp");
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k)
    if (mtp_[k]->block().moe())
      moe_names_.push_back("model.layers." + std::to_string(cfg.num_hidden_layers + k) + ".mlp");
}

template <class T>
void Transformer<T>::init_weights(uint64_t seed, double std) {
  for (auto& p : store_.all()) {
    if (!p->trainable) {
      std::fill(p->value.begin(), p->value.end(), T(0));
    } else if (!p->weight_decay) {
      std::fill(p->value.begin(), p->value.end(), T(1));  // norm weights
    } else {
      // Counter-based draws: element i gets normal(i) whatever thread computes it, so the
      // weights do not depend on the thread count.
      const RandomStream rng(seed, hash_name(p->name));
      T* values = p->value.data();
      const int64_t count = p->numel();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < count; ++i) values[i] = static_cast<T>(std * rng.normal(i));
    }
  }
}

template <class T>
void Transformer<T>::run_trunk(Ctx& ctx, const int32_t* tokens, int64_t batch, int64_t seq,
                               bool training, std::vector<T>& normed_out, double* balance) {
  const int64_t rows = batch * seq, d = cfg_.hidden_size;
  std::vector<T> x(rows * d), y(rows * d);  // [batch*seq, hidden]
  embed_.forward(ctx.embed, tokens, x.data(), rows);
  ctx.blocks.resize(layers_.size());
  *balance = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    *balance += layers_[i]->forward(ctx.blocks[i], x.data(), y.data(), batch, seq,
                                    ctx.weights.balance_alpha, training);
    std::swap(x, y);
  }
  normed_out.resize(rows * d);
  final_norm_.forward(ctx.final_norm, x.data(), normed_out.data(), rows);
}

template <class T>
Losses Transformer<T>::forward(Ctx& ctx, const int32_t* tokens, const int32_t* targets,
                               int64_t batch, int64_t seq, const LossWeights& weights,
                               bool training) {
  const int64_t rows = batch * seq, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  for (int64_t i = 0; i < rows; ++i)
    FRUGAL_CHECK(targets[i] < vocab, "target id {} outside the vocabulary [0, {})", targets[i],
                 vocab);
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.weights = weights;
  Losses losses;

  std::vector<T> normed;
  run_trunk(ctx, tokens, batch, seq, training, normed, &losses.balance);
  ctx.targets.assign(targets, targets + rows);
  ctx.logits.resize(rows * vocab);  // [batch*seq, vocab]
  head_.forward(ctx.head, normed.data(), ctx.logits.data(), rows);
  std::vector<T> token_losses(rows);
  double sum = cpu::xent_fwd(token_losses.data(), ctx.logits.data(), targets, rows, vocab, &ctx.valid);
  losses.main = ctx.valid > 0 ? sum / static_cast<double>(ctx.valid) : 0.0;
  losses.tokens = ctx.valid;

  // Multi-token prediction: depth k sees positions [0, seq-k) of the previous depth.
  const MtpChainForward chain = mtp_chain_forward<T>(
      ctx.mtp, mtp_, head_,
      [this](typename Embedding<T>::Ctx& ectx, const int32_t* ids, T* out, int64_t n) {
        embed_.forward(ectx, ids, out, n);
      },
      std::move(normed), tokens, targets, batch, seq, d, vocab, weights.balance_alpha, training);
  for (double balance : chain.balance) losses.balance += balance;
  losses.mtp = chain.ce_sum;
  const int64_t depths_run = static_cast<int64_t>(chain.balance.size());
  const double depth = static_cast<double>(std::max<size_t>(mtp_.size(), 1));
  if (depths_run > 0) losses.mtp /= static_cast<double>(depths_run);
  // The MTP term is lambda/D * sum_k CE_k (spec §3.2), D the configured depth.
  const double mtp_term =
      weights.mtp_lambda / depth * losses.mtp * static_cast<double>(depths_run);
  losses.total = losses.main + mtp_term + losses.balance;
  return losses;
}

template <class T>
void Transformer<T>::backward_input(Ctx& ctx, double loss_scale) {
  const int64_t rows = ctx.batch * ctx.seq, d = cfg_.hidden_size, vocab = cfg_.vocab_size;
  const double depth = static_cast<double>(std::max<size_t>(mtp_.size(), 1));

  std::vector<T> dlogits(rows * vocab), dnormed(rows * d);
  double main_scale = ctx.valid > 0 ? loss_scale / static_cast<double>(ctx.valid) : 0.0;
  cpu::xent_bwd(dlogits.data(), ctx.logits.data(), ctx.targets.data(), rows, vocab, main_scale);
  head_.backward_input(ctx.head, dlogits.data(), dnormed.data());

  // MTP depths from the deepest: each passes d(h_prev) to the depth before it.
  const std::vector<T> dh_next = mtp_chain_backward<T>(ctx.mtp, mtp_, head_, ctx.batch, d, vocab,
                                                       loss_scale, ctx.weights.mtp_lambda, depth);
  if (!dh_next.empty())
    for (int64_t i = 0; i < rows * d; ++i) dnormed[i] += dh_next[i];

  std::vector<T> dx(rows * d), dy(rows * d);
  final_norm_.backward_input(ctx.final_norm, dnormed.data(), dy.data());
  for (size_t i = layers_.size(); i-- > 0;) {
    layers_[i]->backward_input(ctx.blocks[i], dy.data(), dx.data(), loss_scale);
    std::swap(dx, dy);
  }
  embed_.backward_input(ctx.embed, dy.data());
}

template <class T>
void Transformer<T>::backward_weight(Ctx& ctx) {
  head_.backward_weight(ctx.head);
  for (size_t k = 0; k < ctx.mtp.size(); ++k) {
    head_.backward_weight(ctx.mtp[k].head);
    mtp_[k]->backward_weight(ctx.mtp[k].module);
    embed_.backward_weight(ctx.mtp[k].embed);
  }
  final_norm_.backward_weight(ctx.final_norm);
  for (size_t i = layers_.size(); i-- > 0;) layers_[i]->backward_weight(ctx.blocks[i]);
  embed_.backward_weight(ctx.embed);
}

template <class T>
std::vector<T> Transformer<T>::last_logits(const int32_t* tokens, int64_t seq) {
  Ctx ctx;
  ctx.weights.balance_alpha = 0;
  std::vector<T> normed;
  double balance = 0;
  run_trunk(ctx, tokens, 1, seq, false, normed, &balance);
  std::vector<T> logits(cfg_.vocab_size);
  cpu::matmul_nt(logits.data(), normed.data() + (seq - 1) * cfg_.hidden_size, head_.weight().data(),
                 1, cfg_.vocab_size, cfg_.hidden_size, false);
  return logits;
}

template <class T>
std::vector<MoE<T>*> Transformer<T>::moe_layers() const {
  std::vector<MoE<T>*> out;
  for (auto& layer : layers_)
    if (layer->moe()) out.push_back(layer->moe());
  for (auto& m : mtp_)
    if (m->block().moe()) out.push_back(m->block().moe());
  return out;
}

template <class T>
void Transformer<T>::update_balance_bias(double gamma) {
  for (MoE<T>* moe : moe_layers()) {
    if (moe->has_bias())
      moe->update_bias(gamma);
    else
      moe->reset_load();  // methods without a selection bias (V2's) have nothing to update
  }
}

template <class T>
std::vector<ExpertLoad> Transformer<T>::expert_load() const {
  std::vector<ExpertLoad> out;
  auto layers = moe_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& load = layers[i]->expert_load();
    double total = 0, mx = 0;
    for (int64_t c : load) {
      total += static_cast<double>(c);
      mx = std::max(mx, static_cast<double>(c));
    }
    double mean = load.empty() ? 0.0 : total / static_cast<double>(load.size());
    out.push_back({moe_names_[i], mean > 0 ? mx / mean : 0.0});
  }
  return out;
}

template <class T>
double Transformer<T>::flops_per_token(int64_t seq) const {
  // Matrix parameters touched by one token (routed experts count top_k of n_routed).
  double active = 0;
  for (auto& p : store_.all()) {
    if (!p->weight_decay || p->name == "model.embed_tokens.weight") continue;
    bool mtp = false;
    for (int64_t k = 0; k < cfg_.num_nextn_predict_layers; ++k)
      if (p->name.rfind("model.layers." + std::to_string(cfg_.num_hidden_layers + k) + ".", 0) == 0)
        mtp = true;
    if (mtp) continue;  // MFU counts the main model, as is customary
    double n = static_cast<double>(p->numel());
    if (p->name.find(".mlp.experts.") != std::string::npos)
      n *= static_cast<double>(cfg_.num_experts_per_tok) / static_cast<double>(cfg_.n_routed_experts);
    active += n;
  }
  // Causal attention: q·k over (seq+1)/2 keys on average, then p·v.
  double attention = 2.0 * static_cast<double>(cfg_.num_hidden_layers * cfg_.num_attention_heads) *
                     static_cast<double>(cfg_.qk_head_dim() + cfg_.v_head_dim) *
                     (static_cast<double>(seq) + 1) / 2;
  return 2.0 * active + attention;
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace frugal
