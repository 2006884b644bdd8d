// One multi-token-prediction module (spec §3.1), depth k = 1..D, stored as layer
// num_hidden_layers + k - 1 ("model.layers.<L+k-1>"):
//   h'_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])     embedding first, as deployed code
//   h^k  = Block(h')                                            a full decoder layer (MoE if the
//                                                               layer index is an MoE layer)
//   logits^k = head(shared_head.norm(h^k))                      head shared with the main model
// h^0 is the main model's output after its final RMSNorm (what deployed speculative decoders
// feed; the paper leaves it open). Embedding and head are the main model's tensors; the caller
// runs them. Shapes: all [batch*seq_k, hidden] with seq_k = seq - k.
//
// Accumulation rule: parameter gradients accumulate (+=); activation gradients are assigned.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/block.h"
#include "model/linear.h"
#include "model/rmsnorm.h"

namespace frugal {

// The inputs of MTP depth k (spec §3.1) from the previous depth: for sequence b and position
// i < seq - k, the token and target at i + k of the batch, and the previous depth's output row
// (b, i) of prev [batch, prev_seq, d]. shifted, shifted_targets [batch * (seq-k)];
// h_prev [batch * (seq-k), d].
template <class T>
void mtp_depth_inputs(int32_t* shifted, int32_t* shifted_targets, T* h_prev, const int32_t* tokens,
                      const int32_t* targets, const T* prev, int64_t batch, int64_t seq,
                      int64_t prev_seq, int64_t k, int64_t d) {
  const int64_t mseq = seq - k;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < mseq; ++i) {
      shifted[b * mseq + i] = tokens[b * seq + i + k];
      shifted_targets[b * mseq + i] = targets[b * seq + i + k];
      std::copy_n(prev + (b * prev_seq + i) * d, d, h_prev + (b * mseq + i) * d);
    }
}

template <class T>
class MtpModule {
 public:
  struct Ctx {
    typename RMSNorm<T>::Ctx enorm, hnorm, head_norm;
    typename Linear<T>::Ctx eh_proj;
    typename Block<T>::Ctx block;
    int64_t batch = 0, seq = 0;
  };

  MtpModule(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg,
            int64_t layer_index, ExpertShard experts = {})
      : hidden_(cfg.hidden_size),
        enorm_(store, prefix + ".enorm", cfg.hidden_size, cfg.rms_norm_eps),
        hnorm_(store, prefix + ".hnorm", cfg.hidden_size, cfg.rms_norm_eps),
        eh_proj_(store, prefix + ".eh_proj", 2 * cfg.hidden_size, cfg.hidden_size),
        block_(store, prefix, cfg, layer_index, experts),
        head_norm_(store, prefix + ".shared_head.norm", cfg.hidden_size, cfg.rms_norm_eps) {}

  // emb, h_prev -> h_out (block output, fed to depth k+1) and normed (input of the shared head).
  // Returns the block's balance loss.
  T forward(Ctx& ctx, const T* emb, const T* h_prev, T* h_out, T* normed, int64_t batch,
            int64_t seq, double balance_alpha, bool count_load) const {
    const int64_t rows = batch * seq, d = hidden_;
    ctx.batch = batch;
    ctx.seq = seq;
    std::vector<T> e(rows * d), h(rows * d), cat(rows * 2 * d), proj(rows * d);
    enorm_.forward(ctx.enorm, emb, e.data(), rows);
    hnorm_.forward(ctx.hnorm, h_prev, h.data(), rows);
    for (int64_t r = 0; r < rows; ++r) {  // [rows, 2*hidden] = [e ; h]
      std::copy(e.begin() + r * d, e.begin() + (r + 1) * d, cat.begin() + r * 2 * d);
      std::copy(h.begin() + r * d, h.begin() + (r + 1) * d, cat.begin() + r * 2 * d + d);
    }
    eh_proj_.forward(ctx.eh_proj, cat.data(), proj.data(), rows);
    T balance = block_.forward(ctx.block, proj.data(), h_out, batch, seq, balance_alpha, count_load);
    head_norm_.forward(ctx.head_norm, h_out, normed, rows);
    return balance;
  }

  // dh_out: gradient from depth k+1 (nullptr when this is the last depth); dnormed: from the head.
  void backward_input(Ctx& ctx, const T* dh_out, const T* dnormed, T* demb, T* dh_prev,
                      double dbalance) const {
    const int64_t rows = ctx.batch * ctx.seq, d = hidden_;
    std::vector<T> dh(rows * d), dproj(rows * d), dcat(rows * 2 * d), de(rows * d), dhn(rows * d);
    head_norm_.backward_input(ctx.head_norm, dnormed, dh.data());
    if (dh_out != nullptr)
      for (int64_t i = 0; i < rows * d; ++i) dh[i] += dh_out[i];
    block_.backward_input(ctx.block, dh.data(), dproj.data(), dbalance);
    eh_proj_.backward_input(ctx.eh_proj, dproj.data(), dcat.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(dcat.begin() + r * 2 * d, dcat.begin() + r * 2 * d + d, de.begin() + r * d);
      std::copy(dcat.begin() + r * 2 * d + d, dcat.begin() + (r + 1) * 2 * d, dhn.begin() + r * d);
    }
    enorm_.backward_input(ctx.enorm, de.data(), demb);
    hnorm_.backward_input(ctx.hnorm, dhn.data(), dh_prev);
  }

  void backward_weight(Ctx& ctx) const {
    head_norm_.backward_weight(ctx.head_norm);
    block_.backward_weight(ctx.block);
    eh_proj_.backward_weight(ctx.eh_proj);
    enorm_.backward_weight(ctx.enorm);
    hnorm_.backward_weight(ctx.hnorm);
  }

  const Block<T>& block() const { return block_; }

 private:
  int64_t hidden_;
  RMSNorm<T> enorm_, hnorm_;
  Linear<T> eh_proj_;
  Block<T> block_;
  RMSNorm<T> head_norm_;
};

}  // namespace frugal
