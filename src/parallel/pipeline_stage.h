// One pipeline stage of the CPU model (spec §5.1): a contiguous range of decoder layers, plus the
// token embedding on the first stage and the final RMSNorm, LM head, MTP modules and losses on the
// last stage. Built from the same ModelConfig as Transformer<T> and registering its tensors under
// the same names, so the stages of a pipeline together hold exactly the single-process
// checkpoint's tensors.
//   first stage   tokens [rows]          -> embed -> layers[begin, end) -> out [rows, hidden]
//   middle stage  in [rows, hidden]      -> layers[begin, end)           -> out [rows, hidden]
//   last stage    in [rows, hidden]      -> layers[begin, end) -> norm -> head -> CE (+ MTP)
// rows = batch * seq. The MTP modules need the token embedding: the last stage uses the table of
// the ParamStore it is built in when the first stage already registered it there (one rank
// holding both, DualPipe and DualPipeV: physically shared), else it registers its own copy under
// the same name, whose gradient the runner sums with the first stage's (pipeline_runner.h).
// Which layers a stage holds comes from a StageLayout (stage_layout.h: even, explicit or
// cost-balanced); layers_of_stage is the even split (the first L % stages stages take one more).
//
// The op order inside a stage is the one of Transformer<T>, so chaining the stages of one
// micro-batch gives bitwise Transformer<T>'s losses and gradients.
//
// Accumulation rule: parameter gradients accumulate (+=); the input gradient is assigned.
// backward_input keeps what backward_weight needs (it may run later: zero-bubble schedules).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/transformer.h"
#include "parallel/stage_layout.h"

namespace frugal {

// [begin, end) of the decoder layers of `stage` among `stages`, split evenly (even_stage_layout).
std::pair<int64_t, int64_t> layers_of_stage(int64_t layers, int stages, int stage);

// What one stage contributes to one micro-batch's Losses. layer_balance has one entry per decoder
// layer and MTP module of the whole model (L + D), zero outside this stage; main, mtp and tokens
// are set by the last stage only. Summing the records of all stages entry-wise (exact: every entry
// is set by one stage) and calling finish_losses gives bitwise Transformer<T>::forward's Losses.
struct StageLosses {
  std::vector<double> layer_balance;  // [L + D]
  double main = 0;     // next-token CE (mean over valid targets)
  double mtp = 0;      // sum over the depths run of their CE means
  double mtp_depths_run = 0;
  double tokens = 0;   // valid main targets
};
Losses finish_losses(const StageLosses& all_stages, const LossWeights& weights, int64_t mtp_depth);

// The MoE layers a stage holds, as indices into the whole model's MoE layers `moe_layer_names`
// (Transformer order, names "model.layers.{i}.mlp"): its main layers in [layer_begin, layer_end),
// then, on the last stage, the MTP modules' (layers >= main_layers). The stage's own MoE layer
// lists (moe_layers(), expert_load_counters()) are in this order.
std::vector<size_t> stage_moe_layers(const std::vector<std::string>& moe_layer_names,
                                     int64_t layer_begin, int64_t layer_end, bool last,
                                     int64_t main_layers);

template <class T>
class PipelineStage {
 public:
  struct Ctx {
    int64_t batch = 0, seq = 0;
    LossWeights weights;
    typename Embedding<T>::Ctx embed;
    std::vector<typename Block<T>::Ctx> blocks;
    typename RMSNorm<T>::Ctx final_norm;
    typename Linear<T>::Ctx head;
    std::vector<int32_t> targets;  // [rows]
    std::vector<T> logits;         // [rows, vocab]
    int64_t valid = 0;
    std::vector<typename Transformer<T>::MtpCtx> mtp;
  };

  // Stage `stage` of `layout` (layout.stages() stages; its layer counts must fit cfg).
  PipelineStage(ParamStore<T>& store, const ModelConfig& cfg, const StageLayout& layout, int stage,
                ExpertShard experts = {});
  // Stage `stage` of `stages` under the even split.
  PipelineStage(ParamStore<T>& store, const ModelConfig& cfg, int stage, int stages,
                ExpertShard experts = {});

  // input: [rows, hidden] (ignored on the first stage); tokens and targets: [rows] (the first stage
  // reads tokens, the last both). output: [rows, hidden], left empty on the last stage.
  StageLosses forward(Ctx& ctx, const T* input, const int32_t* tokens, const int32_t* targets,
                      int64_t batch, int64_t seq, const LossWeights& weights, bool training,
                      std::vector<T>& output) const;
  // doutput: [rows, hidden] (ignored on the last stage, which starts from its losses times
  // loss_scale); dinput: [rows, hidden], assigned (left empty on the first stage).
  void backward_input(Ctx& ctx, const T* doutput, std::vector<T>& dinput, double loss_scale) const;
  void backward_weight(Ctx& ctx) const;

  int stage() const { return stage_; }
  bool first() const { return stage_ == 0; }
  bool last() const { return stage_ == stages_ - 1; }
  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  // The MoE layers of this stage: its main layers in order, then the MTP modules'.
  std::vector<MoE<T>*> moe_layers() const;

 private:
  void embed_forward(typename Embedding<T>::Ctx& ctx, const int32_t* ids, T* out, int64_t n) const;
  void embed_backward_weight(typename Embedding<T>::Ctx& ctx) const;

  ModelConfig cfg_;
  int stage_ = 0, stages_ = 1;
  int64_t layer_begin_ = 0, layer_end_ = 0;
  Param<T>* embed_table_ = nullptr;  // first stage, and the last when it has MTP modules
  std::vector<std::unique_ptr<Block<T>>> layers_;
  std::unique_ptr<RMSNorm<T>> final_norm_;  // last stage
  std::unique_ptr<Linear<T>> head_;         // last stage
  std::vector<std::unique_ptr<MtpModule<T>>> mtp_;  // last stage
};

}  // namespace frugal
