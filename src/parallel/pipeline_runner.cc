// The pipeline runner (see pipeline_runner.h): one rank's step list, executed in order.
#include "parallel/pipeline_runner.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <type_traits>

namespace frugal {

namespace {

template <class T>
CommType comm_type_of() {
  return std::is_same_v<T, double> ? CommType::F64 : CommType::F32;
}

}  // namespace

template <class T>
PipelineRunner<T>::PipelineRunner(const ModelConfig& cfg, pipeline::Schedule schedule,
                                  Communicator& comm, ExpertShard experts, StageLayout layout)
    : cfg_(cfg), schedule_(std::move(schedule)), layout_(std::move(layout)), comm_(comm) {
  using pipeline::ScheduleKind;
  FRUGAL_CHECK(comm_.size() == schedule_.ranks,
               "pipeline: the {} schedule needs {} ranks, the communicator has {}",
               pipeline::schedule_kind_name(schedule_.kind), schedule_.ranks, comm_.size());
  const int r = comm_.rank(), p = schedule_.stages;
  if (layout_.layers.empty()) layout_ = even_stage_layout(cfg_.num_hidden_layers, p);
  check_stage_layout(layout_, cfg_.num_hidden_layers, p, "pipeline stage layout");
  // Ascending stage order: the copies on ranks r and P-1-r list the same tensors.
  for (int s : stages_of_rank(schedule_.kind, p, r))
    stages_.push_back(std::make_unique<PipelineStage<T>>(store_, cfg_, layout_, s, experts));

  plan_communication();
  if (schedule_.kind == ScheduleKind::DualPipe) {
    copies_ = comm_.split(std::min(r, p - 1 - r), r);
  } else if (schedule_.ranks > 1) {
    // The last stage's embedding copy (MTP) lives on another rank than the first stage's.
    const int first_rank = schedule_.rank_of(0, 0), last_rank = schedule_.rank_of(0, p - 1);
    sum_embedding_ = cfg_.num_nextn_predict_layers > 0 && first_rank != last_rank;
    const bool holder = r == first_rank || r == last_rank;
    std::unique_ptr<Communicator> group = comm_.split(holder ? 0 : 1 + r, r);
    if (holder && sum_embedding_) embed_holders_ = std::move(group);
  }
}

template <class T>
void PipelineRunner<T>::plan_communication() {
  pipeline::CommunicationPlan plan = pipeline::plan_communication(schedule_);
  plan_ = std::move(plan.actions[comm_.rank()]);
  const auto& pairs = plan.exchanging_pairs;
  for (const auto& [a, b] : pairs) {  // collective: every rank splits for every pair, in order
    const bool member = comm_.rank() == a || comm_.rank() == b;
    std::unique_ptr<Communicator> group = comm_.split(member ? 0 : 1, comm_.rank());
    if (member) pair_groups_[comm_.rank() == a ? b : a] = std::move(group);
  }
}

template <class T>
PipelineStage<T>& PipelineRunner<T>::stage(int index) {
  for (auto& s : stages_)
    if (s->stage() == index) return *s;
  fail("pipeline: rank {} was given stage {} by the schedule but does not hold it", comm_.rank(),
       index);
}

template <class T>
int PipelineRunner<T>::tag(int micro_batch, int stage, bool gradient) const {
  return 2 * (micro_batch * schedule_.stages + stage) + (gradient ? 1 : 0);
}

template <class T>
std::vector<Losses> PipelineRunner<T>::step(const int32_t* tokens, const int32_t* targets,
                                            int64_t micro_batch_sequences, int64_t seq,
                                            const LossWeights& weights, bool training,
                                            double loss_scale) {
  using pipeline::Op;
  const int micro_batches = schedule_.micro_batches;
  const int64_t rows = micro_batch_sequences * seq, d = cfg_.hidden_size;
  if (loss_scale < 0) loss_scale = 1.0 / static_cast<double>(micro_batches);
  const CommType type = comm_type_of<T>();

  std::map<Key, typename PipelineStage<T>::Ctx> contexts;
  std::map<Key, std::vector<T>> activations;  // output of (micro_batch, stage)   [rows, hidden]
  std::map<Key, std::vector<T>> gradients;    // input gradient of (micro_batch, stage)
  // Per micro-batch: layer balances [L + D], main, mtp, depths run, tokens (summed over ranks).
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  const int64_t record = balance_entries + 4;
  std::vector<double> records(static_cast<size_t>(micro_batches * record), 0.0);

  auto take = [](std::map<Key, std::vector<T>>& map, const Key& key, const char* what) {
    auto it = map.find(key);
    FRUGAL_CHECK(it != map.end(), "pipeline: the {} of micro-batch {} stage {} is not here", what,
                 key.first, key.second);
    std::vector<T> out = std::move(it->second);
    map.erase(it);
    return out;
  };
  auto forward = [&](const pipeline::Work& w) {
    PipelineStage<T>& st = stage(w.stage);
    std::vector<T> input;
    if (!st.first()) input = take(activations, {w.micro_batch, w.stage - 1}, "activation");
    const int64_t offset = static_cast<int64_t>(w.micro_batch) * rows;
    std::vector<T> output;
    StageLosses part = st.forward(contexts[{w.micro_batch, w.stage}], input.data(), tokens + offset,
                                  targets + offset, micro_batch_sequences, seq, weights, training,
                                  output);
    add_record(st, part, records.data() + w.micro_batch * record);
    if (!st.last()) activations[{w.micro_batch, w.stage}] = std::move(output);
  };
  auto backward_input = [&](const pipeline::Work& w) {
    PipelineStage<T>& st = stage(w.stage);
    std::vector<T> doutput;
    if (!st.last()) doutput = take(gradients, {w.micro_batch, w.stage + 1}, "gradient");
    std::vector<T> dinput;
    auto it = contexts.find({w.micro_batch, w.stage});
    FRUGAL_CHECK(it != contexts.end(), "pipeline: B of micro-batch {} stage {} before its F",
                 w.micro_batch, w.stage);
    st.backward_input(it->second, doutput.data(), dinput, loss_scale);
    if (!st.first()) gradients[{w.micro_batch, w.stage}] = std::move(dinput);
  };
  auto backward_weight = [&](const pipeline::Work& w) {
    auto it = contexts.find({w.micro_batch, w.stage});
    FRUGAL_CHECK(it != contexts.end(), "pipeline: W of micro-batch {} stage {} before its F",
                 w.micro_batch, w.stage);
    stage(w.stage).backward_weight(it->second);
    contexts.erase(it);
  };

  auto buffer_of = [&](const Message& m) -> std::map<Key, std::vector<T>>& {
    return m.gradient ? gradients : activations;
  };
  for (const Action& a : plan_) {
    switch (a.kind) {
      case ActionKind::Compute: {
        const pipeline::Step& s = schedule_.steps[comm_.rank()][a.step];
        switch (s.op) {
          case Op::Forward: forward(s.work); break;
          case Op::BackwardInput: backward_input(s.work); break;
          case Op::BackwardWeight: backward_weight(s.work); break;
          case Op::ForwardBackward:  // no overlap on the CPU: F, then the other chunk's B and W
            forward(s.work);
            backward_input(s.other);
            backward_weight(s.other);
            break;
          default: fail("pipeline: step {} is not a compute step", pipeline::op_name(s.op));
        }
        break;
      }
      case ActionKind::Send: {
        std::vector<T> buffer = take(buffer_of(a.send), {a.send.micro_batch, a.send.stage},
                                     a.send.gradient ? "gradient" : "activation");
        comm_.send(buffer.data(), rows * d, type, a.peer,
                   tag(a.send.micro_batch, a.send.stage, a.send.gradient));
        break;
      }
      case ActionKind::Recv: {
        std::vector<T>& buffer = buffer_of(a.recv)[{a.recv.micro_batch, a.recv.stage}];
        buffer.resize(rows * d);
        comm_.recv(buffer.data(), rows * d, type, a.peer,
                   tag(a.recv.micro_batch, a.recv.stage, a.recv.gradient));
        break;
      }
      case ActionKind::Exchange: {
        std::vector<T> out = take(buffer_of(a.send), {a.send.micro_batch, a.send.stage},
                                  a.send.gradient ? "gradient" : "activation");
        std::vector<T>& in = buffer_of(a.recv)[{a.recv.micro_batch, a.recv.stage}];
        in.resize(rows * d);
        Communicator& pair = *pair_groups_.at(a.peer);
        const int64_t n = rows * d;
        const int64_t counts[2][2] = {{0, n}, {n, 0}};  // [my index in the pair][to index]
        const std::span<const int64_t> my_counts(counts[pair.rank()], 2);
        pair.all_to_all_v(in.data(), my_counts, out.data(), my_counts, type);
        break;
      }
    }
  }
  FRUGAL_CHECK(contexts.empty() && activations.empty() && gradients.empty(),
               "pipeline: rank {} ended the {} step with {} contexts, {} activations and {} "
               "gradients left (a W, send or consumer missing from its list)",
               comm_.rank(), pipeline::schedule_kind_name(schedule_.kind), contexts.size(),
               activations.size(), gradients.size());

  sum_shared_gradients();

  // Every entry was set on exactly one rank (zeros elsewhere): the sum is exact.
  comm_.all_reduce_sum(records.data(), static_cast<int64_t>(records.size()), CommType::F64);
  std::vector<Losses> out;
  for (int m = 0; m < micro_batches; ++m)
    out.push_back(finish_record(records.data() + m * record, weights));
  return out;
}

template <class T>
void PipelineRunner<T>::add_record(const PipelineStage<T>& st, const StageLosses& part,
                                   double* rec) const {
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  for (int64_t i = 0; i < balance_entries; ++i)
    if (part.layer_balance[i] != 0) rec[i] = part.layer_balance[i];
  if (st.last()) {
    rec[balance_entries] = part.main;
    rec[balance_entries + 1] = part.mtp;
    rec[balance_entries + 2] = part.mtp_depths_run;
    rec[balance_entries + 3] = part.tokens;
  }
}

template <class T>
Losses PipelineRunner<T>::finish_record(const double* rec, const LossWeights& weights) const {
  const int64_t balance_entries = cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers;
  StageLosses all;
  all.layer_balance.assign(rec, rec + balance_entries);
  all.main = rec[balance_entries];
  all.mtp = rec[balance_entries + 1];
  all.mtp_depths_run = rec[balance_entries + 2];
  all.tokens = rec[balance_entries + 3];
  return finish_losses(all, weights, cfg_.num_nextn_predict_layers);
}

template <class T>
Losses PipelineRunner<T>::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                   int64_t seq) {
  const int64_t n = batch * seq * cfg_.hidden_size;
  const CommType type = comm_type_of<T>();
  const int me = comm_.rank();
  const LossWeights weights{0.0, 0.0};
  std::vector<double> record(
      static_cast<size_t>(cfg_.num_hidden_layers + cfg_.num_nextn_predict_layers + 4), 0.0);
  std::vector<T> x;  // the running activation [batch * seq, hidden], on the rank of the stage
  for (int s = 0; s < schedule_.stages; ++s) {
    const int owner = schedule_.rank_of(0, s);
    const int previous = s > 0 ? schedule_.rank_of(0, s - 1) : owner;
    if (owner != me) {
      if (previous == me) comm_.send(x.data(), n, type, owner, tag(0, s - 1, false));
      continue;
    }
    if (previous != me) {
      x.resize(static_cast<size_t>(n));
      comm_.recv(x.data(), n, type, previous, tag(0, s - 1, false));
    }
    typename PipelineStage<T>::Ctx ctx;
    std::vector<T> output;
    PipelineStage<T>& st = stage(s);
    add_record(st, st.forward(ctx, x.data(), tokens, targets, batch, seq, weights, false, output),
               record.data());
    x = std::move(output);
  }
  comm_.all_reduce_sum(record.data(), static_cast<int64_t>(record.size()), CommType::F64);
  return finish_record(record.data(), weights);
}

template <class T>
void PipelineRunner<T>::sum_shared_gradients() {
  const CommType type = comm_type_of<T>();
  if (copies_ && copies_->size() > 1) {
    for (auto& p : store_.all())
      if (p->trainable)
        copies_->all_reduce_sum(p->grad_data(), static_cast<int64_t>(p->grad.size()), type);
  }
  if (embed_holders_) {
    Param<T>& table = store_.get("model.embed_tokens.weight");
    embed_holders_->all_reduce_sum(table.grad_data(), static_cast<int64_t>(table.grad.size()), type);
  }
}

template <class T>
void PipelineRunner<T>::update_balance_bias(double gamma) {
  for (auto& st : stages_)
    for (MoE<T>* moe : st->moe_layers()) {
      if (copies_ && copies_->size() > 1) {  // rank order: integers, exact
        std::vector<int64_t> load = moe->expert_load();
        copies_->all_reduce_sum(load.data(), static_cast<int64_t>(load.size()), CommType::I64);
        moe->set_expert_load(load);
      }
      if (moe->has_bias())
        moe->update_bias(gamma);
      else
        moe->reset_load();  // methods without a selection bias have nothing to update
    }
}

template <class T>
bool PipelineRunner<T>::counts_in_norm(const std::string& name) const {
  const int r = comm_.rank(), p = schedule_.stages;
  if (schedule_.kind == pipeline::ScheduleKind::DualPipe) return r < p - 1 - r;
  if (embed_holders_ && name == "model.embed_tokens.weight") return stages_.front()->first();
  return true;
}

namespace {

// The position of a tensor's group in the Transformer's creation order: the embedding, the main
// layers, the final norm, the head, the MTP layers. Within a group, a stage creates the tensors in
// the Transformer's order (the same module constructors).
int64_t tensor_group(const std::string& name, int64_t layers) {
  const std::string prefix = "model.layers.";
  if (name.rfind("model.embed_tokens.", 0) == 0) return 0;
  if (name.rfind("model.norm.", 0) == 0) return layers + 1;
  if (name.rfind("lm_head.", 0) == 0) return layers + 2;
  FRUGAL_CHECK(name.rfind(prefix, 0) == 0, "pipeline: unexpected tensor name {}", name);
  const int64_t layer = std::stoll(name.substr(prefix.size()));
  return layer < layers ? 1 + layer : layers + 3 + (layer - layers);
}

}  // namespace

template <class T>
double PipelineRunner<T>::global_grad_norm() {
  // This rank's records, one per counted group: [group, chunk count, chunk sums...].
  std::map<int64_t, std::vector<double>> groups;
  for (auto& p : store_.all()) {
    if (!p->trainable || !counts_in_norm(p->name)) continue;
    std::vector<double>& sums = groups[tensor_group(p->name, cfg_.num_hidden_layers)];
    const int64_t n = static_cast<int64_t>(p->grad.size());
    for (int64_t begin = 0; begin < n; begin += kGradNormChunk)
      sums.push_back(grad_sum_of_squares(p->grad.data() + begin, std::min(n, begin + kGradNormChunk) - begin));
  }
  std::vector<double> local;
  for (auto& [group, sums] : groups) {
    local.push_back(static_cast<double>(group));
    local.push_back(static_cast<double>(sums.size()));
    local.insert(local.end(), sums.begin(), sums.end());
  }
  const int size = comm_.size();
  int64_t length = static_cast<int64_t>(local.size());
  std::vector<int64_t> lengths(size);
  comm_.all_gather(lengths.data(), &length, 1, CommType::I64);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  local.resize(longest, 0.0);
  std::vector<double> all(longest * size);
  comm_.all_gather(all.data(), local.data(), longest, CommType::F64);
  std::map<int64_t, std::vector<double>> ordered;  // every rank's groups, in Transformer order
  for (int r = 0; r < size; ++r)
    for (int64_t i = r * longest; i < r * longest + lengths[r];) {
      const int64_t group = static_cast<int64_t>(all[i]), count = static_cast<int64_t>(all[i + 1]);
      FRUGAL_CHECK(!ordered.count(group), "pipeline: tensor group {} counted on two ranks", group);
      ordered[group].assign(all.begin() + i + 2, all.begin() + i + 2 + count);
      i += 2 + count;
    }
  double total = 0.0;
  for (auto& [group, sums] : ordered)
    for (double s : sums) total += s;
  return std::sqrt(total);
}

template <class T>
PipelineAdamW<T>::PipelineAdamW(const OptimConfig& config, PipelineRunner<T>& runner)
    : config_(config), runner_(runner) {
  AdamW<T>(config, ParamStore<T>{});  // validates the configuration as AdamW does
  for (auto& p : runner.params().all())
    if (p->trainable) {
      m_.emplace_back(p->value.size(), T(0));
      v_.emplace_back(p->value.size(), T(0));
    }
}

template <class T>
typename AdamW<T>::StepInfo PipelineAdamW<T>::step(double lr) {
  FRUGAL_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: learning rate {} must be finite and >= 0",
               lr);
  typename AdamW<T>::StepInfo info;
  info.grad_norm = runner_.global_grad_norm();
  const ClipDecision clip = clip_for_norm(info.grad_norm, config_.grad_clip);
  info.clip_scale = clip.clip_scale;
  info.skipped = clip.skip;
  if (clip.skip) return info;
  ++step_count_;
  const AdamWScalars scalars = adamw_scalars(config_, lr, info.clip_scale, step_count_);
  size_t k = 0;
  for (auto& p : runner_.params().all()) {
    if (!p->trainable) continue;
    adamw_update(p->value.data(), p->grad.data(), m_[k].data(), v_[k].data(), p->numel(),
                 p->weight_decay, scalars);
    ++k;
  }
  return info;
}

template class PipelineAdamW<float>;
template class PipelineAdamW<double>;
template class PipelineRunner<float>;
template class PipelineRunner<double>;

}  // namespace frugal
