// The split of the decoder layers over the pipeline stages (spec §5.1, §5.2): stage s holds the
// contiguous layers [begin(s), end(s)) of the L decoder layers; stage 0 also holds the embedding,
// the last stage the final norm, LM head, MTP modules and losses. Three ways to choose it, selected
// by train.pp_stage_layers (a string, or in TOML also an array of integers):
//   "auto"      (default) cost-balanced: minimizes the largest per-RANK forward cost, where a rank
//               holds one stage (1F1B, ZB1P) or two (DualPipe, DualPipeV: stages s and S-1-s; see
//               stages_of_rank); among the splits that reach that optimum, the one with the
//               smallest sum of squared STAGE costs (the most even stages), then the one whose
//               earlier stages hold more layers (so a uniform model gets the even split back).
//   "even"      L / S layers per stage, the first L % S stages one more (the split before this file).
//   "3,4,3,2"   explicit layer counts, one per stage (S entries: 2 * pp under DualPipeV, pp
//               otherwise), summing to L. Every middle stage holds >= 1 layer; the first and the last
//               stage may hold 0 (when S >= 2): they still do real work (the embedding; the head,
//               MTP modules and losses, often worth several layers), so a 0 there can balance the
//               pipeline, whereas an empty middle stage would only forward activations.
// The cost model (stage_cost_model): forward FLOPs per token, from the ModelConfig at sequence
// length seq: per decoder layer the MLA projections, the causal attention core (on average
// (seq+1)/2 keys per query), the dense FFN or the router + activated routed experts + shared
// experts; the embedding ~0 (a gather); the last stage's extra: the LM head (2 * hidden * vocab)
// plus each MTP module (its decoder layer, its 2*hidden -> hidden projection and the shared head).
// Norms, activations and the softmax are left out (a few percent). The backward costs about twice
// the forward for every part alike, so forward FLOPs rank the stages as the full step does.
//
// The layout changes only which rank builds which modules: tensor names stay the single-process
// ones, so any split resumes any checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "parallel/schedule.h"

namespace frugal {

struct StageLayout {
  std::vector<int64_t> layers;  // [stages] decoder layers per stage

  int stages() const { return static_cast<int>(layers.size()); }
  int64_t begin(int stage) const;
  int64_t end(int stage) const;
  std::pair<int64_t, int64_t> range(int stage) const { return {begin(stage), end(stage)}; }
  // "3,4,3,2" (reads back through parse_stage_layers).
  std::string text() const;
  bool operator==(const StageLayout&) const = default;
};

// L / stages per stage, the first L % stages one more; needs layers >= stages.
StageLayout even_stage_layout(int64_t layers, int stages);

// Checks a layout against the rules above (stage count, sum, >= 1 in the middle, >= 0 at the
// ends); throws frugal::Error naming `key` and the rule.
void check_stage_layout(const StageLayout& layout, int64_t layers, int stages, const std::string& key);

// Forward FLOPs per token of each part (see above).
struct StageCostModel {
  std::vector<double> layer;  // [L] each decoder layer
  double first_extra = 0;     // the embedding
  double last_extra = 0;      // final norm + LM head + MTP modules
};
double decoder_layer_flops(const ModelConfig& cfg, int64_t layer, int64_t seq);
StageCostModel stage_cost_model(const ModelConfig& cfg, int64_t seq);

// The stages rank `rank` holds, ascending: 1F1B/ZB1P {rank}; DualPipeV {rank, stages-1-rank};
// DualPipe {min(r, P-1-r), P-1-min(r, P-1-r)} (ranks r and P-1-r hold copies of the same two).
std::vector<int> stages_of_rank(pipeline::ScheduleKind kind, int stages, int rank);
// Ranks of a schedule over `stages` model stages (inverse of pipeline_stage_count).
int pipeline_rank_count(pipeline::ScheduleKind kind, int stages);

double stage_cost(const StageCostModel& model, const StageLayout& layout, int stage);
// [ranks] the summed cost of each rank's stages.
std::vector<double> rank_costs(const StageCostModel& model, const StageLayout& layout,
                               pipeline::ScheduleKind kind);

// The cost-balanced split of the model's layers (size of model.layer) over `stages` stages of a
// `kind` schedule (see "auto" above). Exact (dynamic programming over the rank structure).
StageLayout balanced_stage_layout(const StageCostModel& model, pipeline::ScheduleKind kind,
                                  int stages);

// train.pp_stage_layers: "auto", "even", or a list "3,4,3,2" (also "[3, 4, 3, 2]"); throws naming
// `key` when the text is none of these. Returns the counts of a list, empty for "auto" / "even".
std::vector<int64_t> parse_stage_layers(const std::string& setting, const std::string& key);

// The layout a run uses: the setting resolved for this model, schedule kind and stage count
// (validated: a list must fit, see check_stage_layout). seq: the training sequence length.
StageLayout resolve_stage_layout(const std::string& setting, const ModelConfig& cfg,
                                 pipeline::ScheduleKind kind, int stages, int64_t seq,
                                 const std::string& key = "train.pp_stage_layers");

// One line for the logs: "pipeline stage split (auto): layers 3,4,3,2; rank costs (GFLOP/token)
// 0.12 0.12".
std::string describe_stage_layout(const std::string& setting, const StageLayout& layout,
                                  const ModelConfig& cfg, pipeline::ScheduleKind kind, int64_t seq);

}  // namespace frugal
