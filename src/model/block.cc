#include "model/block.h"

namespace frugal {

template <class T>
Block<T>::Block(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg,
                int64_t layer_index, ExpertShard experts)
    : hidden_(cfg.hidden_size),
      attn_norm_(store, prefix + ".input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
      ffn_norm_(store, prefix + ".post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps) {
  attn_ = std::make_unique<MLA<T>>(store, prefix + ".self_attn", cfg);
  if (cfg.is_moe_layer(layer_index))
    moe_ = std::make_unique<MoE<T>>(store, prefix + ".mlp", cfg, experts);
  else
    mlp_ = std::make_unique<MLP<T>>(store, prefix + ".mlp", cfg.hidden_size, cfg.intermediate_size);
}

template <class T>
T Block<T>::forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq, double balance_alpha,
                    bool count_load) const {
  const int64_t rows = batch * seq, n = rows * hidden_;
  ctx.batch = batch;
  ctx.seq = seq;
  std::vector<T> normed(n), branch(n);  // [rows, hidden]
  attn_norm_.forward(ctx.attn_norm, x, normed.data(), rows);
  attn_->forward(ctx.attn, normed.data(), branch.data(), batch, seq);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + branch[i];  // y holds h for now
  ffn_norm_.forward(ctx.ffn_norm, y, normed.data(), rows);
  T balance = 0;
  if (moe_)
    balance = moe_->forward(ctx.moe, normed.data(), branch.data(), batch, seq, balance_alpha,
                            count_load);
  else
    mlp_->forward(ctx.mlp, normed.data(), branch.data(), rows);
  for (int64_t i = 0; i < n; ++i) y[i] += branch[i];
  return balance;
}

template <class T>
void Block<T>::backward_input(Ctx& ctx, const T* dy, T* dx, double dbalance) const {
  const int64_t n = ctx.batch * ctx.seq * hidden_;
  std::vector<T> dnormed(n), dh(n);
  if (moe_)
    moe_->backward_input(ctx.moe, dy, dnormed.data(), dbalance);
  else
    mlp_->backward_input(ctx.mlp, dy, dnormed.data());
  ffn_norm_.backward_input(ctx.ffn_norm, dnormed.data(), dh.data());
  for (int64_t i = 0; i < n; ++i) dh[i] += dy[i];  // residual: dh = dy + d(ffn branch)
  attn_->backward_input(ctx.attn, dh.data(), dnormed.data());
  attn_norm_.backward_input(ctx.attn_norm, dnormed.data(), dx);
  for (int64_t i = 0; i < n; ++i) dx[i] += dh[i];  // residual: dx = dh + d(attention branch)
}

template <class T>
void Block<T>::backward_weight(Ctx& ctx) const {
  if (moe_)
    moe_->backward_weight(ctx.moe);
  else
    mlp_->backward_weight(ctx.mlp);
  ffn_norm_.backward_weight(ctx.ffn_norm);
  attn_->backward_weight(ctx.attn);
  attn_norm_.backward_weight(ctx.attn_norm);
}

template class Block<float>;
template class Block<double>;

}  // namespace frugal
