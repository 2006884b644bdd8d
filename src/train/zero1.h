// ZeRO-1 data parallelism (spec §5.1: "ZeRO-1 DP"): the fp32 master weights' AdamW state is
// sharded over the data-parallel ranks; each rank updates only its shard and the updated
// parameters are all-gathered.
//
// Layout. A group is a flat fp32 list of trainable parameters (store order) over a communicator:
//   dense group   every trainable parameter except held routed experts, over the mesh's dp group
//   expert group  (only when ep > 1) the held routed experts' parameters, over expert_dp: the
//                 ranks holding the same experts (parallel/mesh.h)
// The list is cut into the chunks of the global gradient norm (adamw.h: kGradNormChunk elements
// from each parameter's start); rank r's shard is a run of whole chunks, the runs balanced by
// element count. Gradient buckets are runs of whole chunks too, about bucket_elements long,
// formed from the end of the list (backward order: the last layers' gradients are final first).
//
// A step:
//   reduce_gradients  per bucket, in backward order: the ranks' gradients (Param::grad, each the
//                     sum of that rank's micro-batches) are reduce-scattered: every rank keeps the
//                     rank-order sum of its shard (parallel/communicator.h sums in rank order)
//   step              each chunk's sum of squares is computed by its one owner; the chunk sums,
//                     all-reduced over the dp group (one owner each, so the sum is exact), are
//                     added in the global model's chunk order: the norm is bitwise the norm a
//                     single process computes over the same gradients. Then clipping, AdamW on
//                     the shard (adamw_update: the single-process arithmetic) and, per bucket, an
//                     all-gather of the updated values into every rank's parameters. A non-finite
//                     norm skips the update everywhere (no state changes).
// So with the same summed gradients the updated weights are bitwise those of AdamW<float>.
//
// Checkpoints: gather_full() assembles, on dp rank 0, a single-process model and AdamW holding
// every parameter and moment (from the shards and the other EP ranks' experts), which
// save_checkpoint writes: the files are the ones a single process writes. load() reads this rank's
// shards from any checkpoint's optimizer.safetensors (written by any mesh), load_state() from a
// single-process AdamW.
//
// Pipeline stages (train/pipeline_engine.h): the optimizer can also be built from an explicit
// layout of the whole model in which the tensors of other stages are marked `elsewhere` (numbered
// among the norm chunks, never held or gathered here) and a stage's second copies of a tensor
// (DualPipe, the MTP stage's embedding) are marked not `counted`; the norm's chunk sums are then
// all-reduced over a group spanning every stage (the world), where each chunk has one owner.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/transformer.h"
#include "parallel/mesh.h"
#include "train/adamw.h"

namespace frugal {

// One parameter of the whole (single-process) model, in store order.
struct GlobalParam {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool trainable = true;
  int64_t expert = -1;            // routed expert index, -1 for any other parameter
  Param<float>* local = nullptr;  // this rank's copy, null when another EP rank holds it
  bool elsewhere = false;         // held by another pipeline stage (chunk numbering only)
  bool counted = true;            // this rank's copy is the one the gradient norm counts
};

// The whole model's parameters in store order, from a model that may hold a slice of the experts.
std::vector<GlobalParam> global_param_layout(const Transformer<float>& model);

class Zero1Optimizer {
 public:
  using StepInfo = AdamW<float>::StepInfo;
  static constexpr int64_t kDefaultBucketElements = int64_t{1} << 22;

  // Collective over the mesh's stage. The model holds the experts of this rank's EP slice.
  Zero1Optimizer(const OptimConfig& config, Transformer<float>& model, const Mesh& mesh,
                 int64_t bucket_elements = kDefaultBucketElements);
  // A pipeline stage's optimizer: `layout` is the whole model's (global_param_layout of a whole
  // model, with local pointing at this rank's tensors, elsewhere and counted set as above);
  // `norm_group` sums the norm's chunk sums (the mesh's world). Collective over the stage.
  Zero1Optimizer(const OptimConfig& config, std::vector<GlobalParam> layout, const Mesh& mesh,
                 Communicator& norm_group, int64_t bucket_elements = kDefaultBucketElements);
  ~Zero1Optimizer();

  // Marks `param`'s gradient final for this step: every bucket whose parameters are all final is
  // reduce-scattered now, in bucket order within its group (a schedule that finishes layers early
  // overlaps these with the rest of its backward). Every rank must mark the same parameters in the
  // same order. Parameters this optimizer does not hold (buffers, other EP ranks') are ignored.
  void grad_ready(const Param<float>& param);
  // Reduce-scatters every bucket not reduced yet (in order) and readies the next step. Gradients
  // are read, not cleared.
  void reduce_gradients();
  // Buckets reduce-scattered so far in this step (all groups).
  int64_t buckets_reduced() const;
  // Norm, clipping, AdamW on the shards, all-gather of the parameters. Needs reduce_gradients.
  StepInfo step(double lr);

  const OptimConfig& config() const { return config_; }
  int64_t step_count() const { return step_count_; }
  // Elements of this rank's shards (all groups) and of the whole model's trainable parameters.
  int64_t shard_elements() const;
  int64_t total_elements() const { return total_trainable_; }
  int64_t num_buckets() const;

  // Collective over the dp group. On dp rank 0, `full_model` (a whole single-process model of the
  // same config) receives every parameter value and `full_optimizer` (built over it) every moment
  // and the step count; the other ranks pass nullptr.
  void gather_full(Transformer<float>* full_model, AdamW<float>* full_optimizer);
  // Reads this rank's shards and the step count from <checkpoint_dir>/optimizer.safetensors.
  void load(const std::string& checkpoint_dir);
  // Reads this rank's shards and the step count from a single-process AdamW of the whole model.
  void load_state(const AdamW<float>& full);

 private:
  struct Group;
  void all_gather_parameters();
  void reduce_bucket(Group& g, size_t b);
  void reset_readiness();
  // Fills this rank's moment shards: read(name, m, v) yields a held parameter's whole moments.
  void fill_shards(
      const std::function<void(const Param<float>&, std::vector<float>&, std::vector<float>&)>&
          read);

  OptimConfig config_;
  const Mesh& mesh_;
  Communicator& norm_group_;
  int64_t experts_per_rank_ = 1;  // routed experts per EP rank
  std::vector<GlobalParam> layout_;
  int64_t num_global_chunks_ = 0;
  int64_t total_trainable_ = 0;
  std::vector<std::unique_ptr<Group>> groups_;
  // For grad_ready: the (group, bucket) pairs each held parameter overlaps.
  std::unordered_map<const Param<float>*, std::vector<std::pair<size_t, size_t>>> param_buckets_;
  int64_t step_count_ = 0;
  bool reduced_ = false;
};

}  // namespace frugal
