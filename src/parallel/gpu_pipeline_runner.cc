// GpuPipelineRunner and GpuPipelineAdamW (see gpu_pipeline_runner.h): one rank's planned actions
// with the GPU stages, the shared-gradient sums, the global norm and the whole-model transfers.
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL)

#include "parallel/gpu_pipeline_runner.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <set>
#include <span>
#include <unordered_map>

#include "core/cuda_check.h"
#include "core/error.h"
#include "io/hf_layout.h"
#include "model/gpu/gpu_moe.h"
#include "parallel/nccl_communicator.h"
#include "train/gpu_engine_kernels.h"

namespace frugal::gpu {

namespace {

constexpr const char* kEmbedding = "model.embed_tokens.weight";

// NCCL matches point-to-point messages in order and only range-checks tags ([0, 32767]): the
// message's tag, folded into that range, only labels the call.
int nccl_tag(const pipeline::Schedule& schedule, const pipeline::Message& m) {
  return pipeline::message_tag(schedule, m) % 32768;
}

// The routed expert a parameter belongs to ("...mlp.experts.{e}...."), else -1.
int64_t routed_expert_of(const std::string& name) {
  static const std::string marker = ".mlp.experts.";
  const size_t at = name.find(marker);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + marker.size()));
}

// The same name with routed expert index `e` instead of its own.
std::string with_expert_index(const std::string& name, int64_t e) {
  static const std::string marker = ".mlp.experts.";
  const size_t begin = name.find(marker) + marker.size(), end = name.find('.', begin);
  return name.substr(0, begin) + std::to_string(e) + name.substr(end);
}

bool timing_requested() {
  const char* value = std::getenv("FRUGAL_PIPELINE_TIMING");
  return value != nullptr && *value != '\0' && std::string(value) != "0";
}

}  // namespace

GpuPipelineRunner::GpuPipelineRunner(cuda::DeviceContext& ctx, const ModelConfig& cfg,
                                     Recipe recipe, pipeline::Schedule schedule,
                                     Communicator& nccl, Communicator& host,
                                     const GpuPipelineMesh& mesh, StageLayout layout)
    : ctx_(ctx),
      cfg_(cfg),
      recipe_(recipe),
      schedule_(std::move(schedule)),
      nccl_(nccl),
      host_(host),
      registry_(ctx),
      mesh_(mesh),
      layout_(std::move(layout)),
      timing_(timing_requested()) {
  using pipeline::ScheduleKind;
  FRUGAL_CHECK(nccl_.size() == schedule_.ranks && host_.size() == schedule_.ranks,
               "GPU pipeline: the {} schedule needs {} ranks; the NCCL communicator has {}, the "
               "host one {}",
               pipeline::schedule_kind_name(schedule_.kind), schedule_.ranks, nccl_.size(),
               host_.size());
  FRUGAL_CHECK(nccl_.rank() == host_.rank(),
               "GPU pipeline: NCCL rank {} and host rank {} differ (the communicators must list "
               "the same ranks in the same order)",
               nccl_.rank(), host_.rank());
  set_input_stream(nccl_, ctx_.stream);
  const bool ep = mesh_.ep != nullptr && mesh_.ep->size() > 1;
  if (ep) {
    FRUGAL_CHECK(mesh_.ep_host != nullptr && mesh_.ep_host->size() == mesh_.ep->size() &&
                     mesh_.ep_host->rank() == mesh_.ep->rank(),
                 "GPU pipeline: the EP group's host communicator must list the NCCL one's ranks");
    FRUGAL_CHECK(mesh_.expert_count > 0 &&
                     mesh_.expert_count * mesh_.ep->size() == cfg_.n_routed_experts &&
                     mesh_.first_expert == mesh_.ep->rank() * mesh_.expert_count,
                 "GPU pipeline: EP rank {} of {} should hold experts [{}, +{}) of {}",
                 mesh_.ep->rank(), mesh_.ep->size(), mesh_.first_expert, mesh_.expert_count,
                 cfg_.n_routed_experts);
    set_input_stream(*mesh_.ep, ctx_.stream);
  } else {
    mesh_.ep = mesh_.ep_host = nullptr;
    mesh_.first_expert = 0;
    mesh_.expert_count = cfg_.n_routed_experts;
  }
  if (mesh_.dp != nullptr) set_input_stream(*mesh_.dp, ctx_.stream);
  if (mesh_.expert_dp != nullptr) set_input_stream(*mesh_.expert_dp, ctx_.stream);
  const int r = host_.rank(), p = schedule_.stages;
  if (layout_.layers.empty()) layout_ = even_stage_layout(cfg_.num_hidden_layers, p);
  check_stage_layout(layout_, cfg_.num_hidden_layers, p, "GPU pipeline stage layout");
  const std::vector<int> held = stages_of_rank(schedule_.kind, p, r);  // one stage of one: once
  {
    // EP: the MoE layers built now hold this EP rank's experts and dispatch over mesh_.ep.
    std::optional<ExpertParallelScope> scope;
    if (ep) scope.emplace(mesh_.ep);
    for (int s : held)  // ascending stage order: DualPipe's copies list the same tensors
      stages_.push_back(
          std::make_unique<GpuPipelineStage>(ctx_, registry_, cfg_, recipe_, layout_, s));
  }

  // The plan and the exchange groups (collective: every rank splits for every pair, in order).
  pipeline::CommunicationPlan plan = pipeline::plan_communication(schedule_);
  plan_ = std::move(plan.actions[r]);
  for (const auto& [a, b] : plan.exchanging_pairs) {
    const bool member = r == a || r == b;
    std::unique_ptr<Communicator> owned;
    Communicator* g = group(member ? 0 : 1, r, schedule_.ranks == 2, owned);
    if (member) pair_groups_[r == a ? b : a] = g;
  }
  if (schedule_.kind == ScheduleKind::DualPipe) {
    std::unique_ptr<Communicator> owned;
    copies_ = group(std::min(r, p - 1 - r), r, schedule_.ranks == 2, owned);
  } else if (schedule_.ranks > 1) {
    const int first_rank = schedule_.rank_of(0, 0), last_rank = schedule_.rank_of(0, p - 1);
    // The same decision on every rank: the group is made only when its sum is needed.
    if (cfg_.num_nextn_predict_layers > 0 && first_rank != last_rank) {
      const bool holder = r == first_rank || r == last_rank;
      std::unique_ptr<Communicator> owned;
      Communicator* g = group(holder ? 0 : 1 + r, r, schedule_.ranks == 2, owned);
      if (holder) embed_holders_ = g;
    }
  }

  // Gradient sets: every trainable array once (scaling, DualPipe's copy sum), the counted ones
  // (under EP the routed experts' apart: their squares are summed over the EP group), and the
  // data-parallel sums (under EP the routed experts over expert_dp, the rest over dp).
  std::vector<DeviceSpan> all, dense, experts;
  std::set<const float*> counted;
  for (const DeviceParam& param : registry_.params()) {
    const int64_t e = routed_expert_of(param.name);
    if (e >= 0)
      FRUGAL_CHECK(e >= mesh_.first_expert && e < mesh_.first_expert + mesh_.expert_count,
                   "GPU pipeline: this rank holds {}, outside its experts [{}, {})", param.name,
                   mesh_.first_expert, mesh_.first_expert + mesh_.expert_count);
    if (!param.trainable || param.grad == nullptr) continue;
    all.push_back({param.grad, param.count});
    (ep && e >= 0 ? experts : dense).push_back({param.grad, param.count});
    if (counts_in_norm(param.name) && counted.insert(param.grad).second)
      (ep && e >= 0 ? expert_norm_tensors_ : norm_tensors_).push_back({param.grad, param.count});
  }
  gradient_spans_ = merge_device_spans(all);
  if (copies_ != nullptr && copies_->size() > 1)
    copies_reducer_ = std::make_unique<GradientAllReducer>(ctx_, *copies_, all);
  if (mesh_.dp != nullptr && mesh_.dp->size() > 1)
    dp_reducer_ = std::make_unique<GradientAllReducer>(ctx_, *mesh_.dp, dense);
  if (ep && mesh_.expert_dp != nullptr && mesh_.expert_dp->size() > 1)
    expert_reducer_ = std::make_unique<GradientAllReducer>(ctx_, *mesh_.expert_dp, experts);
  size_t workspace = 1;
  for (const auto* set : {&norm_tensors_, &expert_norm_tensors_})
    if (!set->empty())
      workspace = std::max(workspace, cuda::grad_norm_workspace_bytes(
                                          set->data(), static_cast<int64_t>(set->size())));
  norm_workspace_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(std::max<size_t>(workspace, 1)));
  norm_scalars_ = cuda::DeviceArray<float>(ctx_, 2);
  norm_flag_ = cuda::DeviceArray<int32_t>(ctx_, 1);
  ctx_.synchronize();
}

GpuPipelineRunner::~GpuPipelineRunner() = default;

namespace {
constexpr int kStepTrack = 0, kForwardTrack = 1, kBackwardTrack = 2, kWeightTrack = 3;

// For each BackwardInput step of `steps`: whether its W comes later than the rank's next compute
// step (true: B defers its weight GEMMs to that W; false: the W follows at once, B runs whole).
std::vector<bool> deferring_backwards(const std::vector<pipeline::Step>& steps) {
  using pipeline::Op;
  std::vector<bool> out(steps.size(), false);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].op != Op::BackwardInput) continue;
    for (size_t j = i + 1; j < steps.size(); ++j) {
      const pipeline::Step& next = steps[j];
      if (next.op != Op::Forward && next.op != Op::BackwardInput &&
          next.op != Op::BackwardWeight && next.op != Op::ForwardBackward)
        continue;  // communication
      out[i] = !(next.op == Op::BackwardWeight &&
                 next.work.micro_batch == steps[i].work.micro_batch &&
                 next.work.stage == steps[i].work.stage);
      break;
    }
  }
  return out;
}
}  // namespace

void GpuPipelineRunner::resolve_timing() {
  const std::vector<std::vector<TimeInterval>> tracks = timeline_.resolve(4);
  FRUGAL_CHECK(tracks[kStepTrack].size() == 1, "GPU pipeline: the timed step has {} step marks",
               tracks[kStepTrack].size());
  const TimeInterval step = tracks[kStepTrack][0];
  std::vector<pipeline::TimedInterval> intervals;  // ms from the step's start
  for (const TimeInterval& i : tracks[kForwardTrack])
    intervals.push_back({pipeline::TimedKind::Forward, i.begin - step.begin, i.end - step.begin});
  for (const TimeInterval& i : tracks[kBackwardTrack])
    intervals.push_back({pipeline::TimedKind::Backward, i.begin - step.begin, i.end - step.begin});
  for (const TimeInterval& i : tracks[kWeightTrack])
    intervals.push_back({pipeline::TimedKind::Weight, i.begin - step.begin, i.end - step.begin});
  last_timing_ = pipeline::summarize_timing(step.end - step.begin, intervals);
}

std::vector<pipeline::PipelineTiming> GpuPipelineRunner::gather_timing() {
  std::vector<double> packed = pipeline::pack_timings(last_timing_, host_.rank(), host_.size());
  host_.all_reduce_sum(packed.data(), static_cast<int64_t>(packed.size()), CommType::F64);
  return pipeline::unpack_timings(packed, host_.size());
}

bool GpuPipelineRunner::peer_expert(
    const std::string& name,
    const std::unordered_map<std::string, const DeviceParam*>& held) const {
  if (mesh_.ep == nullptr) return false;
  const int64_t e = routed_expert_of(name);
  if (e < 0 || (e >= mesh_.first_expert && e < mesh_.first_expert + mesh_.expert_count))
    return false;
  return held.count(with_expert_index(name, mesh_.first_expert)) > 0;
}

void GpuPipelineRunner::sum_expert_loads_over_data_parallel() {
  if (mesh_.dp == nullptr || mesh_.dp->size() <= 1) return;
  for (auto& st : stages_)
    for (const DeviceLoadCounter& counter : st->expert_load_counters())
      mesh_.dp->all_reduce_sum(counter.counts, counter.experts, CommType::I64);
}

Communicator* GpuPipelineRunner::group(int color, int key, bool whole,
                                       std::unique_ptr<Communicator>& owned) {
  if (whole) return &nccl_;  // two ranks, both members: the group is the communicator itself
  owned = nccl_.split(color, key);
  set_input_stream(*owned, ctx_.stream);
  Communicator* g = owned.get();
  owned_groups_.push_back(std::move(owned));
  return g;
}

GpuPipelineStage& GpuPipelineRunner::stage(int index) {
  for (auto& s : stages_)
    if (s->stage() == index) return *s;
  fail("GPU pipeline: rank {} was given stage {} by the schedule but does not hold it",
       host_.rank(), index);
}

std::vector<Losses> GpuPipelineRunner::step(const int32_t* tokens, const int32_t* targets,
                                            int64_t micro_batch_sequences, int64_t seq,
                                            const LossWeights& weights, bool training,
                                            double loss_scale) {
  using pipeline::ActionKind;
  using pipeline::Message;
  using pipeline::Op;
  FRUGAL_CHECK(micro_batch_sequences > 0 && seq > 0,
               "GPU pipeline: {} sequences of {} tokens per micro-batch", micro_batch_sequences,
               seq);
  const int micro_batches = schedule_.micro_batches;
  const int me = host_.rank();
  const int64_t rows = micro_batch_sequences * seq, d = cfg_.hidden_size, n = rows * d;
  if (loss_scale < 0) loss_scale = 1.0 / static_cast<double>(micro_batches);

  std::map<Key, std::unique_ptr<GpuPipelineStage::Run>> runs;
  std::map<Key, cuda::DeviceArray<float>> activations;  // output of (micro_batch, stage) [rows, d]
  std::map<Key, cuda::DeviceArray<float>> gradients;    // input gradient of (micro_batch, stage)
  std::set<Key> awaiting_weight;  // B done (whole), its W step not reached yet
  std::map<Key, std::unique_ptr<GpuPipelineStage::Run>> deferred;  // B done, W work pending
  const std::vector<bool> defers = deferring_backwards(schedule_.steps[me]);
  WeightDeferral deferral;
  size_t bytes_held = 0;
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  const int64_t record = balance_entries + 4;
  std::vector<double> records(static_cast<size_t>(micro_batches * record), 0.0);

  auto take = [](std::map<Key, cuda::DeviceArray<float>>& map, const Key& key, const char* what) {
    auto it = map.find(key);
    FRUGAL_CHECK(it != map.end(), "GPU pipeline: the {} of micro-batch {} stage {} is not here",
                 what, key.first, key.second);
    cuda::DeviceArray<float> out = std::move(it->second);
    map.erase(it);
    return out;
  };
  auto forward = [&](const pipeline::Work& w) {
    GpuPipelineStage& st = stage(w.stage);
    cuda::DeviceArray<float> input;
    if (!st.first()) input = take(activations, {w.micro_batch, w.stage - 1}, "activation");
    cuda::DeviceArray<float> output;
    if (!st.last()) output = cuda::DeviceArray<float>(ctx_, n);
    const int64_t offset = static_cast<int64_t>(w.micro_batch) * rows;
    StageLosses part;
    FRUGAL_CHECK(!runs.count({w.micro_batch, w.stage}),
                 "GPU pipeline: F of micro-batch {} stage {} listed twice", w.micro_batch, w.stage);
    runs[{w.micro_batch, w.stage}] =
        st.forward(input.data(), tokens + offset, targets + offset, micro_batch_sequences, seq,
                   weights, training, output.data(), part);
    add_record(st, part, records.data() + w.micro_batch * record);
    if (!st.last()) activations[{w.micro_batch, w.stage}] = std::move(output);
  };
  // weight_step_follows: a W step for this work comes later in the list; defer: B leaves the
  // weight GEMMs to it.
  auto backward = [&](const pipeline::Work& w, bool weight_step_follows, bool defer) {
    GpuPipelineStage& st = stage(w.stage);
    cuda::DeviceArray<float> doutput;
    if (!st.last()) doutput = take(gradients, {w.micro_batch, w.stage + 1}, "gradient");
    cuda::DeviceArray<float> dinput;
    if (!st.first()) dinput = cuda::DeviceArray<float>(ctx_, n);
    auto it = runs.find({w.micro_batch, w.stage});
    FRUGAL_CHECK(it != runs.end(), "GPU pipeline: B of micro-batch {} stage {} before its F",
                 w.micro_batch, w.stage);
    st.backward_input(it->second, doutput.data(), dinput.data(), loss_scale, defer);
    if (defer) {
      bytes_held += it->second->weight_grads.bytes_held();
      deferral.peak_bytes_held = std::max(deferral.peak_bytes_held, bytes_held);
      ++deferral.deferred_backwards;
      deferred[{w.micro_batch, w.stage}] = std::move(it->second);
    }
    runs.erase(it);
    if (!st.first()) gradients[{w.micro_batch, w.stage}] = std::move(dinput);
    if (weight_step_follows && !defer) awaiting_weight.insert({w.micro_batch, w.stage});
  };
  // W: the deferred weight GEMMs (timed like F and B), or nothing when B ran whole.
  auto backward_weight = [&](const pipeline::Work& w) {
    auto it = deferred.find({w.micro_batch, w.stage});
    if (it == deferred.end()) {
      FRUGAL_CHECK(awaiting_weight.erase({w.micro_batch, w.stage}) == 1,
                   "GPU pipeline: W of micro-batch {} stage {} without a B before it",
                   w.micro_batch, w.stage);
      return;
    }
    if (timing_) timeline_.start(kWeightTrack, ctx_.stream);
    bytes_held -= it->second->weight_grads.bytes_held();
    deferral.weight_gemms += stage(w.stage).backward_weight(it->second);
    if (timing_) timeline_.stop(kWeightTrack, ctx_.stream);
    deferred.erase(it);
  };
  auto buffer_of = [&](const Message& m) -> std::map<Key, cuda::DeviceArray<float>>& {
    return m.gradient ? gradients : activations;
  };
  auto put = [&](const Message& m, cuda::DeviceArray<float> buffer) {
    const bool fresh =
        buffer_of(m).emplace(Key{m.micro_batch, m.stage}, std::move(buffer)).second;
    FRUGAL_CHECK(fresh, "GPU pipeline: rank {} received the {} of micro-batch {} stage {} twice",
                 me, m.gradient ? "gradient" : "activation", m.micro_batch, m.stage);
  };

  // Timing: marks around the whole step and around every F and B, on the compute stream.
  const bool timed = timing_;
  if (timed) {
    timeline_.clear();
    timeline_.start(kStepTrack, ctx_.stream);
  }
  auto timed_forward = [&](const pipeline::Work& w) {
    if (timed) timeline_.start(kForwardTrack, ctx_.stream);
    forward(w);
    if (timed) timeline_.stop(kForwardTrack, ctx_.stream);
  };
  auto timed_backward = [&](const pipeline::Work& w, bool weight_step_follows, bool defer) {
    if (timed) timeline_.start(kBackwardTrack, ctx_.stream);
    backward(w, weight_step_follows, defer);
    if (timed) timeline_.stop(kBackwardTrack, ctx_.stream);
  };

  for (const pipeline::Action& a : plan_) {
    switch (a.kind) {
      case ActionKind::Compute: {
        const pipeline::Step& s = schedule_.steps[me][a.step];
        switch (s.op) {
          case Op::Forward: timed_forward(s.work); break;
          case Op::BackwardInput: timed_backward(s.work, true, defers[a.step]); break;
          case Op::BackwardWeight: backward_weight(s.work); break;
          case Op::ForwardBackward:  // no overlap yet: F, then the other chunk's whole B
            timed_forward(s.work);
            timed_backward(s.other, false, false);
            break;
          default: fail("GPU pipeline: step {} is not a compute step", pipeline::op_name(s.op));
        }
        break;
      }
      case ActionKind::Send: {
        cuda::DeviceArray<float> buffer = take(buffer_of(a.send), {a.send.micro_batch, a.send.stage},
                                               a.send.gradient ? "gradient" : "activation");
        nccl_.send(buffer.data(), n, CommType::F32, a.peer, nccl_tag(schedule_, a.send));
        break;
      }
      case ActionKind::Recv: {
        cuda::DeviceArray<float> buffer(ctx_, n);
        nccl_.recv(buffer.data(), n, CommType::F32, a.peer, nccl_tag(schedule_, a.recv));
        put(a.recv, std::move(buffer));
        break;
      }
      case ActionKind::Exchange: {
        cuda::DeviceArray<float> out = take(buffer_of(a.send), {a.send.micro_batch, a.send.stage},
                                            a.send.gradient ? "gradient" : "activation");
        cuda::DeviceArray<float> in(ctx_, n);
        auto g = pair_groups_.find(a.peer);
        FRUGAL_CHECK(g != pair_groups_.end(), "GPU pipeline: rank {} has no exchange group with {}",
                     me, a.peer);
        Communicator& pair = *g->second;
        const int64_t counts[2][2] = {{0, n}, {n, 0}};  // [my index in the pair][to index]
        const std::span<const int64_t> my_counts(counts[pair.rank()], 2);
        pair.all_to_all_v(in.data(), my_counts, out.data(), my_counts, CommType::F32);
        put(a.recv, std::move(in));
        break;
      }
    }
  }
  FRUGAL_CHECK(runs.empty() && activations.empty() && gradients.empty() &&
                   awaiting_weight.empty() && deferred.empty(),
               "GPU pipeline: rank {} ended the {} step with {} forward runs, {} activations, {} "
               "gradients and {} W steps left (a B, W, send or consumer missing from its list)",
               me, pipeline::schedule_kind_name(schedule_.kind), runs.size(), activations.size(),
               gradients.size(), awaiting_weight.size() + deferred.size());
  last_deferral_ = deferral;

  if (timed) {
    timeline_.stop(kStepTrack, ctx_.stream);
    resolve_timing();
  }

  sum_shared_gradients();
  // Data parallelism: the stage's gradients summed over its dp group (experts over expert_dp).
  if (dp_reducer_) dp_reducer_->all_reduce();
  if (expert_reducer_) expert_reducer_->all_reduce();

  // Every entry was set on exactly one rank (zeros elsewhere): the sum is exact.
  host_.all_reduce_sum(records.data(), static_cast<int64_t>(records.size()), CommType::F64);
  std::vector<Losses> out;
  for (int m = 0; m < micro_batches; ++m)
    out.push_back(finish_record(records.data() + m * record, weights));
  return out;
}

void GpuPipelineRunner::add_record(const GpuPipelineStage& st, const StageLosses& part,
                                   double* rec) const {
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  FRUGAL_CHECK(static_cast<int64_t>(part.layer_balance.size()) == balance_entries,
               "GPU pipeline: stage {} reported {} balance entries, the model has {}", st.stage(),
               part.layer_balance.size(), balance_entries);
  for (int64_t i = 0; i < balance_entries; ++i)
    if (part.layer_balance[i] != 0) rec[i] = part.layer_balance[i];
  if (st.last()) {
    rec[balance_entries] = part.main;
    rec[balance_entries + 1] = part.mtp;
    rec[balance_entries + 2] = part.mtp_depths_run;
    rec[balance_entries + 3] = part.tokens;
  }
}

Losses GpuPipelineRunner::finish_record(const double* rec, const LossWeights& weights) const {
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  StageLosses all;
  all.layer_balance.assign(rec, rec + balance_entries);
  all.main = rec[balance_entries];
  all.mtp = rec[balance_entries + 1];
  all.mtp_depths_run = rec[balance_entries + 2];
  all.tokens = rec[balance_entries + 3];
  return finish_losses(all, weights, cfg_.num_nextn_predict_layers);
}

Losses GpuPipelineRunner::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                   int64_t seq) {
  const int64_t n = batch * seq * cfg_.hidden_size;
  const int me = host_.rank();
  const LossWeights weights{0.0, 0.0};
  std::vector<double> record(
      static_cast<size_t>(cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers + 4), 0.0);
  cuda::DeviceArray<float> x;  // the running activation [batch * seq, hidden], on the stage's rank
  for (int s = 0; s < schedule_.stages; ++s) {
    const int owner = schedule_.rank_of(0, s);
    const int previous = s > 0 ? schedule_.rank_of(0, s - 1) : owner;
    const int tag = s > 0 ? nccl_tag(schedule_, {false, 0, s - 1}) : 0;
    if (owner != me) {
      if (previous == me) nccl_.send(x.data(), n, CommType::F32, owner, tag);
      continue;
    }
    if (previous != me) {
      x = cuda::DeviceArray<float>(ctx_, n);
      nccl_.recv(x.data(), n, CommType::F32, previous, tag);
    }
    GpuPipelineStage& st = stage(s);
    cuda::DeviceArray<float> output;
    if (!st.last()) output = cuda::DeviceArray<float>(ctx_, n);
    StageLosses part;
    std::unique_ptr<GpuPipelineStage::Run> run =
        st.forward(x.data(), tokens, targets, batch, seq, weights, false, output.data(), part);
    add_record(st, part, record.data());
    run.reset();
    x = std::move(output);
  }
  ctx_.synchronize();
  host_.all_reduce_sum(record.data(), static_cast<int64_t>(record.size()), CommType::F64);
  return finish_record(record.data(), weights);
}

void GpuPipelineRunner::sum_shared_gradients() {
  if (copies_reducer_) copies_reducer_->all_reduce();
  if (embed_holders_ != nullptr) {
    for (DeviceParam& p : registry_.params())
      if (p.name == kEmbedding) {
        embed_holders_->all_reduce_sum(p.grad, p.count, CommType::F32);
        return;
      }
    fail("GPU pipeline: rank {} sums the embedding's gradient but holds no {}", host_.rank(),
         kEmbedding);
  }
}

void GpuPipelineRunner::update_balance_bias(double gamma) {
  for (auto& st : stages_) {
    if (copies_ != nullptr && copies_->size() > 1)
      for (const DeviceLoadCounter& counter : st->expert_load_counters())
        copies_->all_reduce_sum(counter.counts, counter.experts, CommType::I64);
    st->update_balance_bias(gamma);
  }
}

std::vector<ExpertLoad> GpuPipelineRunner::expert_load() {
  std::vector<ExpertLoad> out;
  for (auto& st : stages_) {
    std::vector<ExpertLoad> part = st->expert_load();
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

bool GpuPipelineRunner::counts_in_norm(const std::string& name) const {
  const int r = host_.rank(), p = schedule_.stages;
  if (schedule_.kind == pipeline::ScheduleKind::DualPipe) return r < p - 1 - r;
  if (embed_holders_ != nullptr && name == kEmbedding) return stages_.front()->first();
  return true;
}

double GpuPipelineRunner::global_grad_norm() {
  // This rank's counted squares of one set (0 for an empty set), on the compute stream.
  auto squares_of = [&](const std::vector<cuda::GradTensor>& set) {
    if (set.empty()) return 0.0;
    cuda::grad_norm_and_clip(norm_scalars_.data(), norm_scalars_.data() + 1, norm_flag_.data(),
                             set.data(), static_cast<int64_t>(set.size()), 0.0f,
                             norm_workspace_.data(), ctx_.stream);
    float norm = 0;
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(&norm, norm_scalars_.data(), sizeof(float),
                                      cudaMemcpyDeviceToHost, ctx_.stream));
    ctx_.synchronize();
    return static_cast<double>(norm) * static_cast<double>(norm);
  };
  double squares = squares_of(norm_tensors_);
  if (mesh_.ep_host != nullptr) {  // the stage's routed experts: one slice per EP rank
    double experts = squares_of(expert_norm_tensors_);
    mesh_.ep_host->all_reduce_sum(&experts, 1, CommType::F64);
    squares += experts;
  }
  host_.all_reduce_sum(&squares, 1, CommType::F64);
  return std::sqrt(squares);
}

void GpuPipelineRunner::scale_gradients(float scale) {
  for (const DeviceSpan& span : gradient_spans_)
    cuda::scale_in_place(span.data, span.count, scale, ctx_.stream);
}

void GpuPipelineRunner::zero_grad() {
  registry_.zero_grad();
}

void GpuPipelineRunner::weights_updated() {
  for (auto& st : stages_) st->refresh();
}

void GpuPipelineRunner::upload(const ParamStore<float>& whole) {
  registry_.upload_values(whole, "GPU pipeline upload");
  ctx_.synchronize();
  weights_updated();
  ctx_.synchronize();
}

void GpuPipelineRunner::download(ParamStore<float>& whole) {
  std::unordered_map<std::string, const DeviceParam*> held;
  for (const DeviceParam& p : registry_.params()) held.emplace(p.name, &p);
  ctx_.synchronize();
  const auto& all = whole.all();
  std::vector<int32_t> owners(all.size(), 0);
  for (size_t i = 0; i < all.size(); ++i) {
    Param<float>& h = *all[i];
    const int64_t count = static_cast<int64_t>(h.value.size());
    const bool with_grad = h.grad.size() == h.value.size();
    auto it = held.find(h.name);
    // EP: a routed expert of a layer held here comes from its EP owner; a dense tensor from EP
    // rank 0 alone (the EP sum below then adds one copy).
    const bool peer = peer_expert(h.name, held);
    const bool dense_elsewhere = mesh_.ep_host != nullptr && routed_expert_of(h.name) < 0 &&
                                 mesh_.ep_host->rank() != 0;
    const bool mine = it != held.end() && counts_in_norm(h.name) && !dense_elsewhere;
    if (mine) {
      const DeviceParam& p = *it->second;
      FRUGAL_CHECK(h.shape == p.shape,
                   "GPU pipeline download: {} has shape {} on the host, {} here", h.name,
                   shape_text(h.shape), shape_text(p.shape));
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(h.value.data(), p.value, static_cast<size_t>(count) * sizeof(float),
                                        cudaMemcpyDeviceToHost, ctx_.stream));
      if (with_grad) {
        if (p.grad != nullptr)
          FRUGAL_CUDA_CHECK(cudaMemcpyAsync(h.grad.data(), p.grad,
                                            static_cast<size_t>(count) * sizeof(float),
                                            cudaMemcpyDeviceToHost, ctx_.stream));
        else
          std::fill(h.grad.begin(), h.grad.end(), 0.0f);
      }
      ctx_.synchronize();
      owners[i] = 1;
    } else {
      std::fill(h.value.begin(), h.value.end(), 0.0f);
      if (with_grad) std::fill(h.grad.begin(), h.grad.end(), 0.0f);
    }
    // The EP ranks of one stage hold the same layers, so they reach the same tensors in order.
    if (mesh_.ep_host != nullptr && (it != held.end() || peer)) {
      mesh_.ep_host->all_reduce_sum(h.value.data(), count, CommType::F32);
      if (with_grad) mesh_.ep_host->all_reduce_sum(h.grad.data(), count, CommType::F32);
      mesh_.ep_host->all_reduce_sum(&owners[i], 1, CommType::I32);
    }
    host_.all_reduce_sum(h.value.data(), count, CommType::F32);
    if (with_grad) host_.all_reduce_sum(h.grad.data(), count, CommType::F32);
  }
  host_.all_reduce_sum(owners.data(), static_cast<int64_t>(owners.size()), CommType::I32);
  for (size_t i = 0; i < all.size(); ++i)
    FRUGAL_CHECK(owners[i] == 1,
                 "GPU pipeline download: tensor {} is owned by {} ranks of the {} pipeline (must "
                 "be exactly one)",
                 all[i]->name, owners[i], pipeline::schedule_kind_name(schedule_.kind));
}

GpuPipelineAdamW::GpuPipelineAdamW(cuda::DeviceContext& ctx, const OptimConfig& config,
                                   GpuPipelineRunner& runner)
    : config_(config), runner_(runner) {
  OptimConfig unclipped = config;
  unclipped.grad_clip = 0;  // the clip is the whole model's, applied in step()
  adamw_ = std::make_unique<GpuAdamW>(ctx, unclipped, runner.params(), runner.recipe(),
                                      [&runner] { runner.weights_updated(); });
}

GpuAdamW::StepInfo GpuPipelineAdamW::step(double lr) {
  GpuAdamW::StepInfo info;
  info.grad_norm = runner_.global_grad_norm();
  if (!std::isfinite(info.grad_norm)) {  // the same norm on every rank: all skip
    info.skipped = true;
    info.clip_scale = 0;
    ++skipped_;
    return info;
  }
  const float scale = clip_scale_for_norm(info.grad_norm, config_.grad_clip);
  info.clip_scale = scale;
  if (scale < 1.0f) runner_.scale_gradients(scale);
  const GpuAdamW::StepInfo local = adamw_->step(lr);
  FRUGAL_CHECK(!local.skipped,
               "GPU pipeline rank {}: the local AdamW skipped a step whose global gradient norm {} "
               "is finite",
               runner_.host().rank(), info.grad_norm);
  return info;
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA && FRUGAL_HAVE_NCCL
