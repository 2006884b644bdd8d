// DeepSeekMoE feed-forward layer (spec §2). For each token x_t [hidden]:
//   logits = x_t · W_gᵀ                              gate GEMM in T (the router keeps high precision)
//   (idx, w) = router(logits, bias)                  kernels/moe/router.h (spec §2.1)
//   y_t = shared(x_t) + sum_k w_{t,k} * expert_{idx_{t,k}}(x_t)
// No token dropping: the tokens are grouped per expert (kernels/moe/permute.h) and each expert runs
// once over its tokens. forward also returns the complementary sequence-wise balance loss (spec
// §2.3, kernels/moe/balance_loss.h) of this layer, which uses the actual routed selection as f's
// indicator, and optionally counts the load per expert for the auxiliary-loss-free bias update
// (spec §2.2: b_i += gamma * sign(mean_load - load_i), once per step).
//
// Parameters (Hugging Face names, prefix e.g. "model.layers.3.mlp"):
//   prefix.gate.weight                  [E, hidden]   Matrix (trained; kept in T, never FP8)
//   prefix.gate.e_score_correction_bias [E]           Buffer (no gradient; starts at 0; only when
//                                                      topk_method is noaux_tc)
//   prefix.experts.{i}.{gate,up,down}_proj.weight     MLP with moe_intermediate_size
//   prefix.shared_experts.{gate,up,down}_proj.weight  MLP with moe_intermediate_size *
//                                                     n_shared_experts (when n_shared_experts > 0)
//
// Accumulation rule: parameter gradients accumulate (+=: gate, every expert, shared experts) in
// backward_weight only; dx is assigned by backward_input, which touches no parameter gradient.
// The balance-loss gradient flows through P (scores -> logits -> gate weight and x); f has none.
//
// Expert parallelism: a layer may hold only a slice of the routed experts (ExpertShard: the
// parameters keep their global names "experts.{i}"), and an ExpertRunner installed with
// set_expert_runner then runs the routed experts over the permuted rows instead of the local loop
// (parallel/expert_parallel.h exchanges the rows with the ranks that own the experts). Router,
// shared experts, permutation and combine stay here, unchanged.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/param.h"
#include "kernels/moe/balance_loss.h"
#include "kernels/moe/permute.h"
#include "kernels/moe/router.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/mlp.h"

namespace frugal {

// Router settings of a config, checked; errors name the key ("model.n_group: ...").
cpu::RouterParams router_params(const ModelConfig& config);

// Summary of per-expert token counts, for the step log.
struct ExpertLoadStats {
  int64_t total = 0;         // assignments counted (tokens * K)
  int64_t min = 0, max = 0;  // least and most loaded expert
  double mean = 0;           // total / E
  double max_over_mean = 0;  // max / mean (1 = perfectly balanced; 0 when nothing counted)
};
ExpertLoadStats expert_load_stats(const std::vector<int64_t>& load);

// The routed experts a process holds: [first, first + count) of the layer's n_routed_experts
// (count -1: all of them, the single-process model).
struct ExpertShard {
  int64_t first = 0;
  int64_t count = -1;
};

template <class T>
class ExpertRunner;

template <class T>
class MoE {
 public:
  struct Ctx {
    typename Linear<T>::Ctx gate;
    std::vector<T> scores;                      // [rows, E] s (sigmoid/softmax of the logits)
    std::vector<int64_t> topk_idx;              // [rows, K] chosen experts
    std::vector<T> topk_weight;                 // [rows, K] routing weights
    std::vector<int64_t> expert_offsets;        // [E+1] permuted rows of each expert
    std::vector<int64_t> assignment_row;        // [rows*K] permuted row of assignment t*K+k
    std::vector<T> expert_out;                  // [rows*K, hidden] expert outputs, permuted order
    std::vector<typename MLP<T>::Ctx> experts;  // [E] (untouched for experts with no token); an
                                                // ExpertRunner keeps its own segments here
    std::vector<int64_t> runner_layout;         // what an ExpertRunner keeps from forward to backward
    typename MLP<T>::Ctx shared;
    int64_t rows = 0, batch = 0, seq = 0;
    double balance_alpha = 0;
  };

  MoE() = default;
  MoE(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg,
      ExpertShard shard = {})
      : prefix_(prefix), router_(router_params(cfg)), hidden_(cfg.hidden_size) {
    FRUGAL_CHECK(cfg.hidden_size > 0, "model.hidden_size: must be positive, got {}",
                 cfg.hidden_size);
    FRUGAL_CHECK(cfg.moe_intermediate_size > 0,
                 "model.moe_intermediate_size: must be positive, got {}",
                 cfg.moe_intermediate_size);
    FRUGAL_CHECK(cfg.n_shared_experts >= 0, "model.n_shared_experts: must be >= 0, got {}",
                 cfg.n_shared_experts);
    const int64_t E = router_.n_experts;
    gate_ = Linear<T>(store, prefix + ".gate", hidden_, E);
    if (router_.topk_method == cpu::TopkMethod::NoauxTc)
      bias_ = &store.add(prefix + ".gate.e_score_correction_bias", {E}, ParamKind::Buffer);
    first_expert_ = shard.first;
    const int64_t local = shard.count < 0 ? E - shard.first : shard.count;
    FRUGAL_CHECK(shard.first >= 0 && local >= 1 && shard.first + local <= E,
                 "{}: expert shard [{}, {}) is not a non-empty part of the {} routed experts",
                 prefix, shard.first, shard.first + local, E);
    experts_.reserve(local);
    for (int64_t e = first_expert_; e < first_expert_ + local; ++e)
      experts_.emplace_back(store, prefix + ".experts." + std::to_string(e), hidden_,
                            cfg.moe_intermediate_size);
    if (cfg.n_shared_experts > 0) {
      has_shared_ = true;
      shared_ = MLP<T>(store, prefix + ".shared_experts", hidden_,
                       cfg.moe_intermediate_size * cfg.n_shared_experts);
    }
    load_.assign(E, 0);
  }

  // x, y [batch*seq, hidden]; sequence b is rows [b*seq, (b+1)*seq). Returns this layer's
  // balance loss (0 when balance_alpha == 0). count_load adds the routed tokens per expert to the
  // load counter.
  T forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq, double balance_alpha,
            bool count_load) {
    const int64_t rows = batch * seq, E = router_.n_experts, K = router_.top_k, H = hidden_;
    ctx.rows = rows;
    ctx.batch = batch;
    ctx.seq = seq;
    ctx.balance_alpha = balance_alpha;

    std::vector<T> logits(rows * E);
    gate_.forward(ctx.gate, x, logits.data(), rows);  // [rows, E]
    ctx.scores.resize(rows * E);
    ctx.topk_idx.resize(rows * K);
    ctx.topk_weight.resize(rows * K);
    cpu::router_fwd(ctx.topk_idx.data(), ctx.topk_weight.data(), ctx.scores.data(), logits.data(),
                    bias_ ? bias_->data() : nullptr, rows, router_);  // [rows, K]

    ctx.expert_offsets.resize(E + 1);
    ctx.assignment_row.resize(rows * K);
    std::vector<int64_t> sorted_assignment(rows * K);
    cpu::build_expert_permutation(ctx.expert_offsets.data(), sorted_assignment.data(),
                                  ctx.assignment_row.data(), ctx.topk_idx.data(), rows, K, E);
    std::vector<T> xp(rows * K * H);
    cpu::permute_rows(xp.data(), x, sorted_assignment.data(), rows, K, H);  // [rows*K, hidden]
    ctx.expert_out.resize(rows * K * H);
    if (runner_) {
      runner_->forward(*this, ctx, xp.data(), ctx.expert_out.data());
    } else {
      require_all_experts();
      ctx.experts.assign(E, typename MLP<T>::Ctx{});
      for (int64_t e = 0; e < E; ++e) {
        const int64_t begin = ctx.expert_offsets[e], count = ctx.expert_offsets[e + 1] - begin;
        if (count > 0)
          experts_[e].forward(ctx.experts[e], xp.data() + begin * H,
                              ctx.expert_out.data() + begin * H, count);
      }
    }

    if (has_shared_) shared_.forward(ctx.shared, x, y, rows);  // [rows, hidden]
    cpu::combine_fwd(y, ctx.expert_out.data(), ctx.topk_weight.data(), ctx.assignment_row.data(),
                     rows, K, H, /*accumulate=*/has_shared_);

    if (count_load)
      for (int64_t a = 0; a < rows * K; ++a) ++load_[ctx.topk_idx[a]];
    if (balance_alpha == 0.0 || rows == 0) return T(0);
    return static_cast<T>(cpu::seq_balance_loss_fwd(ctx.scores.data(), ctx.topk_idx.data(), batch,
                                                    seq, E, K, balance_alpha));
  }

  // dy [rows, hidden] -> dx [rows, hidden] (assigned). dloss_balance = d(total loss)/d(this
  // layer's balance loss). Keeps what backward_weight needs; touches no parameter gradient.
  void backward_input(Ctx& ctx, const T* dy, T* dx, double dloss_balance) const {
    const int64_t rows = ctx.rows, E = router_.n_experts, K = router_.top_k, H = hidden_;
    if (has_shared_)
      shared_.backward_input(ctx.shared, dy, dx);
    else
      std::fill(dx, dx + rows * H, T(0));

    std::vector<T> d_expert_out(rows * K * H), dweights(rows * K);
    cpu::combine_bwd(d_expert_out.data(), dweights.data(), dy, ctx.expert_out.data(),
                     ctx.topk_weight.data(), ctx.assignment_row.data(), rows, K, H);
    std::vector<T> dxp(rows * K * H);  // [rows*K, hidden] permuted
    if (runner_) {
      runner_->backward_input(*this, ctx, d_expert_out.data(), dxp.data());
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t begin = ctx.expert_offsets[e], count = ctx.expert_offsets[e + 1] - begin;
        if (count > 0)
          experts_[e].backward_input(ctx.experts[e], d_expert_out.data() + begin * H,
                                     dxp.data() + begin * H);
      }
    }
    cpu::unpermute_sum(dx, dxp.data(), ctx.assignment_row.data(), rows, K, H, /*accumulate=*/true);

    std::vector<T> dscores;
    if (ctx.balance_alpha != 0.0 && dloss_balance != 0.0 && rows > 0) {
      dscores.resize(rows * E);
      cpu::seq_balance_loss_bwd(dscores.data(), ctx.scores.data(), ctx.topk_idx.data(), ctx.batch,
                                ctx.seq, E, K, ctx.balance_alpha, dloss_balance, false);
    }
    std::vector<T> dlogits(rows * E);
    cpu::router_bwd(dlogits.data(), dweights.data(), dscores.empty() ? nullptr : dscores.data(),
                    ctx.scores.data(), ctx.topk_idx.data(), rows, router_);  // [rows, E]
    std::vector<T> dx_gate(rows * H);
    gate_.backward_input(ctx.gate, dlogits.data(), dx_gate.data());  // [rows, hidden]
    for (int64_t i = 0; i < rows * H; ++i) dx[i] += dx_gate[i];

    // Only the module contexts are needed from here on.
    ctx.expert_out = {};
    ctx.scores = {};
  }

  // gate, expert and shared-expert weight gradients += ...; then releases the context.
  void backward_weight(Ctx& ctx) const {
    gate_.backward_weight(ctx.gate);
    if (runner_) {
      runner_->backward_weight(*this, ctx);
    } else {
      for (int64_t e = 0; e < router_.n_experts && e < static_cast<int64_t>(ctx.experts.size());
           ++e)
        if (ctx.experts[e].rows > 0) experts_[e].backward_weight(ctx.experts[e]);
    }
    if (has_shared_) shared_.backward_weight(ctx.shared);
    ctx = Ctx{};
  }

  // Tokens routed to each expert [E] since the last update_bias / reset_load.
  const std::vector<int64_t>& expert_load() const { return load_; }
  void reset_load() { std::fill(load_.begin(), load_.end(), int64_t{0}); }
  // Replaces the counters (e.g. with their sum over data-parallel ranks, so that the bias update
  // and the log agree on every rank).
  void set_expert_load(const std::vector<int64_t>& load) {
    FRUGAL_CHECK(load.size() == load_.size(), "{}: expert load has {} entries, expected {}",
                 prefix_, load.size(), load_.size());
    load_ = load;
  }
  // Spec §2.2 with this layer's counters: b_i += gamma * sign(mean_load - load_i) (0 when equal),
  // then the counters restart. gamma = 0 only resets. A nonzero gamma needs topk_method noaux_tc.
  void update_bias(double gamma) {
    const std::vector<int64_t> load = load_;
    update_bias(gamma, load);
  }
  // The same with a load given by the caller (e.g. summed over data-parallel ranks).
  void update_bias(double gamma, const std::vector<int64_t>& load) {
    const int64_t E = router_.n_experts;
    FRUGAL_CHECK(static_cast<int64_t>(load.size()) == E,
                 "{}: expert load has {} entries, expected {}", prefix_, load.size(), E);
    if (gamma != 0.0) {
      FRUGAL_CHECK(bias_ != nullptr,
                   "{}: the bias update (gamma={}) needs topk_method \"noaux_tc\"; set the bias "
                   "update speed to 0 for this router",
                   prefix_, gamma);
      int64_t total = 0;
      for (int64_t v : load) total += v;
      const double mean = static_cast<double>(total) / static_cast<double>(E);
      for (int64_t e = 0; e < E; ++e) {
        const double gap = mean - static_cast<double>(load[e]);
        const double step = gap > 0 ? gamma : (gap < 0 ? -gamma : 0.0);
        bias_->value[e] += static_cast<T>(step);
      }
    }
    reset_load();
  }

  // Which value masked groups take before the top-k: -inf (default, DeepSeek) or 0.0 (HF).
  void set_masked_group_fill(double fill) { router_.masked_group_fill = fill; }

  const std::string& prefix() const { return prefix_; }
  const cpu::RouterParams& router() const { return router_; }
  int64_t hidden() const { return hidden_; }
  int64_t n_experts() const { return router_.n_experts; }
  bool has_bias() const { return bias_ != nullptr; }
  bool has_shared_experts() const { return has_shared_; }
  Param<T>& gate_weight() const { return gate_.weight(); }
  Param<T>& bias() const {
    FRUGAL_CHECK(bias_ != nullptr, "{}: no e_score_correction_bias (topk_method is not noaux_tc)",
                 prefix_);
    return *bias_;
  }
  // Routed expert e (global index); it must be one this layer holds.
  const MLP<T>& expert(int64_t e) const {
    FRUGAL_CHECK(holds_expert(e), "{}: expert {} is not held here (this layer holds [{}, {}))",
                 prefix_, e, first_expert_, first_expert_ + local_experts());
    return experts_[static_cast<size_t>(e - first_expert_)];
  }
  const MLP<T>& shared_experts() const { return shared_; }
  int64_t first_expert() const { return first_expert_; }
  int64_t local_experts() const { return static_cast<int64_t>(experts_.size()); }
  bool holds_expert(int64_t e) const {
    return e >= first_expert_ && e < first_expert_ + local_experts();
  }
  // Installs (or, with nullptr, removes) the runner of the routed experts; not owned.
  void set_expert_runner(ExpertRunner<T>* runner) { runner_ = runner; }

 private:
  std::string prefix_;
  cpu::RouterParams router_;
  int64_t hidden_ = 0;
  Linear<T> gate_;
  Param<T>* bias_ = nullptr;
  void require_all_experts() const {
    FRUGAL_CHECK(local_experts() == router_.n_experts,
                 "{}: holds experts [{}, {}) of {} but no expert-parallel runner is installed",
                 prefix_, first_expert_, first_expert_ + local_experts(), router_.n_experts);
  }

  std::vector<MLP<T>> experts_;  // experts [first_expert_, first_expert_ + size)
  int64_t first_expert_ = 0;
  ExpertRunner<T>* runner_ = nullptr;
  bool has_shared_ = false;
  MLP<T> shared_;
  std::vector<int64_t> load_;  // [E]
};

// Runs the routed experts of an MoE layer over its permuted rows in place of the local loop
// (see the top of this file). ctx.expert_offsets [E+1] says which permuted rows go to which expert.
template <class T>
class ExpertRunner {
 public:
  virtual ~ExpertRunner() = default;
  // xp [rows*K, hidden] permuted rows -> out [rows*K, hidden] expert outputs (same order).
  virtual void forward(const MoE<T>& moe, typename MoE<T>::Ctx& ctx, const T* xp, T* out) = 0;
  // d_out [rows*K, hidden] -> dxp [rows*K, hidden] (assigned); no parameter gradient.
  virtual void backward_input(const MoE<T>& moe, typename MoE<T>::Ctx& ctx, const T* d_out,
                              T* dxp) = 0;
  // The held experts' weight gradients += ...
  virtual void backward_weight(const MoE<T>& moe, typename MoE<T>::Ctx& ctx) = 0;
};

}  // namespace frugal
