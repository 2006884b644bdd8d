// The chain of multi-token-prediction depths (spec §3.1, §3.2) after the main model, shared by
// the whole model (model/transformer.cc) and the last pipeline stage (parallel/pipeline_stage.cc):
// depth k = 1..D sees positions [0, seq-k) of depth k-1's output (depth 0: the main model's
// final-normed hidden states) and the tokens k ahead, runs its MtpModule and the shared head, and
// scores the targets k ahead. Depths whose sequence would be empty are not run.
// The embedding is the caller's (a function, since a pipeline stage may hold a copy of the table):
// forward calls embed(embedding ctx, ids, out [n, hidden], n); backward leaves each depth's
// embedding gradient in its ctx.embed.dout for the caller's embedding backward_weight.
// Accumulation rule: parameter gradients wait for backward_weight; activation gradients assigned.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/xent/xent.h"
#include "model/linear.h"
#include "model/mtp.h"
#include "model/transformer.h"

namespace frugal {

struct MtpChainForward {
  double ce_sum = 0;            // sum over the depths run of their cross-entropy means
  std::vector<double> balance;  // [depths run] each depth's balance loss
};

// normed [batch, seq, hidden]: the main model's final-normed hidden states (consumed).
template <class T, class EmbedFn>
MtpChainForward mtp_chain_forward(std::vector<typename Transformer<T>::MtpCtx>& chain,
                                  const std::vector<std::unique_ptr<MtpModule<T>>>& modules,
                                  const Linear<T>& head, EmbedFn&& embed, std::vector<T> normed,
                                  const int32_t* tokens, const int32_t* targets, int64_t batch,
                                  int64_t seq, int64_t hidden, int64_t vocab,
                                  double balance_alpha, bool training) {
  const int64_t d = hidden;
  MtpChainForward out;
  chain.assign(modules.size(), typename Transformer<T>::MtpCtx{});
  std::vector<T> prev = std::move(normed);  // [batch, prev_seq, hidden]
  int64_t prev_seq = seq;
  for (size_t k = 1; k <= modules.size(); ++k) {
    auto& m = chain[k - 1];
    m.seq = seq - static_cast<int64_t>(k);
    if (m.seq < 1) break;
    const int64_t mrows = batch * m.seq;
    std::vector<int32_t> shifted(mrows);
    std::vector<T> h_prev(mrows * d);
    m.targets.resize(mrows);
    mtp_depth_inputs(shifted.data(), m.targets.data(), h_prev.data(), tokens, targets,
                     prev.data(), batch, seq, prev_seq, static_cast<int64_t>(k), d);
    std::vector<T> emb(mrows * d), h_out(mrows * d), mnormed(mrows * d);
    embed(m.embed, shifted.data(), emb.data(), mrows);
    out.balance.push_back(static_cast<double>(
        modules[k - 1]->forward(m.module, emb.data(), h_prev.data(), h_out.data(),
                                mnormed.data(), batch, m.seq, balance_alpha, training)));
    m.logits.resize(mrows * vocab);
    head.forward(m.head, mnormed.data(), m.logits.data(), mrows);
    std::vector<T> mlosses(mrows);
    const double msum =
        cpu::xent_fwd(mlosses.data(), m.logits.data(), m.targets.data(), mrows, vocab, &m.valid);
    out.ce_sum += m.valid > 0 ? msum / static_cast<double>(m.valid) : 0.0;
    prev = std::move(h_out);
    prev_seq = m.seq;
  }
  chain.resize(out.balance.size());
  return out;
}

// From the deepest depth run: each depth's cross-entropy is scaled by loss_scale * lambda / D /
// its valid targets (spec §3.2, D = `depth`, the configured depth). Returns the gradient the
// chain sends to the main model's final-normed hidden states [batch*seq, hidden] (empty when no
// depth ran).
template <class T>
std::vector<T> mtp_chain_backward(std::vector<typename Transformer<T>::MtpCtx>& chain,
                                  const std::vector<std::unique_ptr<MtpModule<T>>>& modules,
                                  const Linear<T>& head, int64_t batch, int64_t hidden,
                                  int64_t vocab, double loss_scale, double mtp_lambda,
                                  double depth) {
  const int64_t d = hidden;
  std::vector<T> dh_next;  // gradient w.r.t. the h_out of the current depth, from depth k+1
  for (int64_t k = static_cast<int64_t>(chain.size()); k >= 1; --k) {
    auto& m = chain[k - 1];
    const int64_t mrows = batch * m.seq;
    std::vector<T> mdlogits(mrows * vocab), dmnormed(mrows * d), demb(mrows * d),
        dh_prev(mrows * d);
    const double scale =
        m.valid > 0 ? loss_scale * mtp_lambda / depth / static_cast<double>(m.valid) : 0.0;
    cpu::xent_bwd(mdlogits.data(), m.logits.data(), m.targets.data(), mrows, vocab, scale);
    head.backward_input(m.head, mdlogits.data(), dmnormed.data());
    modules[k - 1]->backward_input(m.module, dh_next.empty() ? nullptr : dh_next.data(),
                                   dmnormed.data(), demb.data(), dh_prev.data(), loss_scale);
    m.embed.dout = std::move(demb);  // what Embedding::backward_input keeps
    // Map d(h_prev) [batch, m.seq] onto the previous depth's rows [batch, m.seq + 1].
    const int64_t prev_seq = m.seq + 1;
    std::vector<T> dprev(batch * prev_seq * d, T(0));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < m.seq; ++i)
        std::copy_n(dh_prev.begin() + (b * m.seq + i) * d, d,
                    dprev.begin() + (b * prev_seq + i) * d);
    dh_next = std::move(dprev);
  }
  return dh_next;
}

}  // namespace frugal
