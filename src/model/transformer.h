// The DeepSeek-V3 model with its training loss (spec §1-§3):
//   x = embed_tokens(tokens)                                     [batch*seq, hidden]
//   x = layers[0..L)(x)                                          dense first, then MoE layers
//   logits = lm_head(norm(x))                                    [batch*seq, vocab]
//   MTP depth k = 1..D predicts targets shifted by k from the previous depth's hidden state
//   loss = CE(logits, targets) + lambda/D * sum_k CE_k + sum_layers balance_loss
// targets[i] < 0 are ignored; CE values are means over valid targets.
//
// Accumulation rule: parameter gradients accumulate (+=) until zero_grad(); backward_input does
// the whole input-gradient pass and keeps what backward_weight needs, so the weight half can run
// later (as DualPipe and zero-bubble schedules do).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/param.h"
#include "model/block.h"
#include "model/config.h"
#include "model/embedding.h"
#include "model/linear.h"
#include "model/mtp.h"
#include "model/rmsnorm.h"

namespace frugal {

struct LossWeights {
  double mtp_lambda = 0.3;     // lambda of spec §3.2
  double balance_alpha = 1e-4;  // alpha of spec §2.3
};

struct Losses {
  double total = 0;    // what backward differentiates
  double main = 0;     // next-token cross-entropy
  double mtp = 0;      // mean over depths of the MTP cross-entropies (unweighted)
  double balance = 0;  // sum over MoE layers of the weighted balance loss
  int64_t tokens = 0;  // valid main targets
};

struct ExpertLoad {
  std::string layer;  // parameter prefix of the MoE layer
  double max_over_mean = 0;
};

template <class T>
class Transformer {
 public:
  struct MtpCtx {
    typename Embedding<T>::Ctx embed;
    typename MtpModule<T>::Ctx module;
    typename Linear<T>::Ctx head;
    std::vector<int32_t> targets;  // [batch*seq_k]
    std::vector<T> logits;         // [batch*seq_k, vocab]
    int64_t seq = 0, valid = 0;
  };
  struct Ctx {
    int64_t batch = 0, seq = 0;
    LossWeights weights;
    typename Embedding<T>::Ctx embed;
    std::vector<typename Block<T>::Ctx> blocks;
    typename RMSNorm<T>::Ctx final_norm;
    typename Linear<T>::Ctx head;
    std::vector<int32_t> targets;  // [batch*seq]
    std::vector<T> logits;         // [batch*seq, vocab]
    int64_t valid = 0;
    std::vector<MtpCtx> mtp;
  };

  // `experts`: the routed experts every MoE layer holds (all by default; expert parallelism
  // gives each rank a slice, parallel/expert_parallel.h).
  explicit Transformer(const ModelConfig& cfg, ExpertShard experts = {});

  // Normal(0, std) for matrices (a counter-based stream per parameter name), 1 for norms,
  // 0 for buffers. Independent of the parameter creation order and of the thread count.
  void init_weights(uint64_t seed, double std);

  Losses forward(Ctx& ctx, const int32_t* tokens, const int32_t* targets, int64_t batch,
                 int64_t seq, const LossWeights& weights, bool training);
  // loss_scale multiplies every gradient (e.g. 1/micro-batches for gradient accumulation).
  void backward_input(Ctx& ctx, double loss_scale);
  void backward_weight(Ctx& ctx);

  // Logits of the last position of one sequence (no loss, no MTP, no load counting).
  std::vector<T> last_logits(const int32_t* tokens, int64_t seq);

  // Aux-loss-free balancing (spec §2.2): every MoE layer's bias moves by gamma against its load.
  void update_balance_bias(double gamma);
  std::vector<ExpertLoad> expert_load() const;

  // The MoE layers: the main layers' in order, then the MTP modules'.
  std::vector<MoE<T>*> moe_layers() const;

  ParamStore<T>& params() { return store_; }
  const ParamStore<T>& params() const { return store_; }
  const ModelConfig& config() const { return cfg_; }
  // Forward FLOPs per token of the main model at sequence length seq (for MFU): 2 * active
  // matrix parameters + attention score/value products.
  double flops_per_token(int64_t seq) const;

 private:
  void run_trunk(Ctx& ctx, const int32_t* tokens, int64_t batch, int64_t seq, bool training,
                 std::vector<T>& normed_out, double* balance);

  ModelConfig cfg_;
  ParamStore<T> store_;
  Embedding<T> embed_;
  std::vector<std::unique_ptr<Block<T>>> layers_;
  RMSNorm<T> final_norm_;
  Linear<T> head_;
  std::vector<std::unique_ptr<MtpModule<T>>> mtp_;
  std::vector<std::string> moe_names_;
};

}  // namespace frugal
