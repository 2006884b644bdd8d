// ZeRO-1 data parallelism (zero1.h): sharded AdamW state, bucketed reduce-scatter, all-gather.
#include "train/zero1.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <unordered_map>

#include "core/parse_int.h"
#include "io/safetensors.h"

namespace frugal {

namespace {

constexpr int kTagMoments1 = 11, kTagMoments2 = 12, kTagValues = 13;

// The three weights of routed expert e of an MoE layer, in store order.
std::vector<Param<float>*> expert_params(const MoE<float>& moe, int64_t e) {
  const MLP<float>& mlp = moe.expert(e);
  return {&mlp.gate_proj().weight(), &mlp.up_proj().weight(), &mlp.down_proj().weight()};
}

std::vector<GlobalParam> virtual_expert(const MoE<float>& moe, int64_t held, int64_t e) {
  std::vector<GlobalParam> out;
  const char* names[] = {".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"};
  const std::vector<Param<float>*> like = expert_params(moe, held);
  for (int w = 0; w < 3; ++w) {
    GlobalParam g;
    g.name = moe.prefix() + ".experts." + std::to_string(e) + names[w];
    g.shape = like[w]->shape;
    g.numel = like[w]->numel();
    g.trainable = like[w]->trainable;
    g.expert = e;
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace

std::vector<GlobalParam> global_param_layout(const Transformer<float>& model) {
  struct ExpertSlot {
    const MoE<float>* moe;
    int64_t expert;
    int which;
  };
  std::unordered_map<const Param<float>*, ExpertSlot> slots;
  for (const MoE<float>* moe : model.moe_layers())
    for (int64_t e = moe->first_expert(); e < moe->first_expert() + moe->local_experts(); ++e) {
      auto params = expert_params(*moe, e);
      for (int w = 0; w < 3; ++w) slots[params[w]] = {moe, e, w};
    }
  std::vector<GlobalParam> out;
  for (const auto& p : model.params().all()) {
    auto it = slots.find(p.get());
    const ExpertSlot* slot = it == slots.end() ? nullptr : &it->second;
    const MoE<float>* moe = slot ? slot->moe : nullptr;
    // Experts held by other ranks sit before the first held expert and after the last one.
    if (slot && slot->expert == moe->first_expert() && slot->which == 0)
      for (int64_t e = 0; e < moe->first_expert(); ++e)
        for (auto& g : virtual_expert(*moe, slot->expert, e)) out.push_back(std::move(g));
    GlobalParam g;
    g.name = p->name;
    g.shape = p->shape;
    g.numel = p->numel();
    g.trainable = p->trainable;
    g.expert = slot ? slot->expert : -1;
    g.local = p.get();
    out.push_back(std::move(g));
    const int64_t last = moe ? moe->first_expert() + moe->local_experts() - 1 : -1;
    if (slot && slot->expert == last && slot->which == 2)
      for (int64_t e = last + 1; e < moe->n_experts(); ++e)
        for (auto& g2 : virtual_expert(*moe, slot->expert, e)) out.push_back(std::move(g2));
  }
  return out;
}

// One flat list of parameters over one communicator, cut into norm chunks.
struct Zero1Optimizer::Group {
  struct Chunk {
    Param<float>* param;
    int64_t offset;  // first element in the parameter
    int64_t length;
    int64_t flat;    // first element in the group's flat list
    int64_t global;  // index among the whole model's norm chunks
    bool counted;    // the norm counts this copy
  };
  Communicator* comm = nullptr;
  std::vector<Chunk> chunks;
  std::vector<Param<float>*> params;  // in flat order; params[i] starts at param_flat[i]
  std::vector<int64_t> param_flat;
  int64_t total = 0;
  std::vector<size_t> shard_chunk;   // [size + 1]: rank r owns chunks [shard_chunk[r], [r+1])
  std::vector<int64_t> shard_flat;   // [size + 1]: and flat elements [shard_flat[r], [r+1])
  std::vector<std::pair<size_t, size_t>> buckets;  // chunk ranges, in reduce (backward) order
  std::vector<float> grad, m, v;     // this rank's shard
  std::vector<int64_t> bucket_params;  // distinct parameters overlapping each bucket
  std::vector<int64_t> pending;        // of those, not yet marked ready this step
  size_t next_bucket = 0;              // buckets [0, next_bucket) are reduced this step

  int me() const { return comm->rank(); }
  int64_t shard_begin(int r) const { return shard_flat[static_cast<size_t>(r)]; }
  int64_t shard_length(int r) const { return shard_flat[r + 1] - shard_flat[r]; }
  int64_t chunk_end_flat(size_t c) const { return c < chunks.size() ? chunks[c].flat : total; }

  // Copies flat elements [lo, hi) of the chunks [c0, c1) from the parameters' grads (or values)
  // to out; write_values copies them back from `in` into the values.
  void copy_range(size_t c0, size_t c1, int64_t lo, int64_t hi, bool gradient, float* out) const {
    for (size_t c = c0; c < c1; ++c) {
      const Chunk& k = chunks[c];
      const int64_t a = std::max(lo, k.flat), b = std::min(hi, k.flat + k.length);
      if (a >= b) continue;
      const std::vector<float>& src = gradient ? k.param->grad : k.param->value;
      std::memcpy(out + (a - lo), src.data() + k.offset + (a - k.flat),
                  static_cast<size_t>(b - a) * sizeof(float));
    }
  }
  void write_values(size_t c0, size_t c1, int64_t lo, int64_t hi, const float* in) const {
    for (size_t c = c0; c < c1; ++c) {
      const Chunk& k = chunks[c];
      const int64_t a = std::max(lo, k.flat), b = std::min(hi, k.flat + k.length);
      if (a >= b) continue;
      std::memcpy(k.param->value.data() + k.offset + (a - k.flat), in + (a - lo),
                  static_cast<size_t>(b - a) * sizeof(float));
    }
  }
  // Rank r's part of bucket b: flat [lo, hi).
  std::pair<int64_t, int64_t> bucket_part(size_t b, int r) const {
    const int64_t f0 = chunks[buckets[b].first].flat, f1 = chunk_end_flat(buckets[b].second);
    const int64_t lo = std::max(f0, shard_flat[r]), hi = std::min(f1, shard_flat[r + 1]);
    return {lo, std::max(lo, hi)};
  }
  int64_t bucket_max_part(size_t b) const {
    int64_t most = 0;
    for (int r = 0; r < comm->size(); ++r) {
      auto [lo, hi] = bucket_part(b, r);
      most = std::max(most, hi - lo);
    }
    return most;
  }
};

Zero1Optimizer::Zero1Optimizer(const OptimConfig& config, Transformer<float>& model,
                               const Mesh& mesh, int64_t bucket_elements)
    : Zero1Optimizer(config, global_param_layout(model), mesh, mesh.dp(), bucket_elements) {}

Zero1Optimizer::Zero1Optimizer(const OptimConfig& config, std::vector<GlobalParam> layout,
                               const Mesh& mesh, Communicator& norm_group,
                               int64_t bucket_elements)
    : config_(config), mesh_(mesh), norm_group_(norm_group), layout_(std::move(layout)) {
  FRUGAL_CHECK(bucket_elements >= 1, "ZeRO-1: bucket size {} must be >= 1", bucket_elements);
  AdamW<float> check_config(config, ParamStore<float>{});  // same option checks as AdamW
  const bool expert_group = mesh.shape().ep > 1;
  int64_t n_experts = 0;
  for (const GlobalParam& g : layout_) n_experts = std::max(n_experts, g.expert + 1);
  experts_per_rank_ = std::max<int64_t>(1, n_experts / mesh.shape().ep);
  auto dense = std::make_unique<Group>();
  dense->comm = &mesh.dp();
  auto experts = std::make_unique<Group>();
  experts->comm = &mesh.expert_dp();
  for (const GlobalParam& g : layout_) {
    if (!g.trainable) continue;
    total_trainable_ += g.numel;
    const int64_t first_chunk = num_global_chunks_;
    num_global_chunks_ += (g.numel + kGradNormChunk - 1) / kGradNormChunk;
    if (!g.local) continue;  // another EP rank's expert, or another stage's tensor
    Group& group = expert_group && g.expert >= 0 ? *experts : *dense;
    group.params.push_back(g.local);
    group.param_flat.push_back(group.total);
    for (int64_t begin = 0, c = first_chunk; begin < g.numel; begin += kGradNormChunk, ++c) {
      const int64_t length = std::min(kGradNormChunk, g.numel - begin);
      group.chunks.push_back({g.local, begin, length, group.total, c, g.counted});
      group.total += length;
    }
  }
  groups_.push_back(std::move(dense));
  if (expert_group) groups_.push_back(std::move(experts));

  for (auto& group : groups_) {
    Group& g = *group;
    const int size = g.comm->size();
    // Chunk c belongs to the rank in whose equal share of the flat list it starts.
    g.shard_chunk.assign(static_cast<size_t>(size) + 1, g.chunks.size());
    g.shard_chunk[0] = 0;
    for (int r = 1; r < size; ++r) {
      const int64_t target = g.total * r / size;
      size_t c = g.shard_chunk[r - 1];
      while (c < g.chunks.size() && g.chunks[c].flat < target) ++c;
      g.shard_chunk[r] = c;
    }
    g.shard_flat.resize(g.shard_chunk.size());
    for (size_t r = 0; r < g.shard_chunk.size(); ++r) g.shard_flat[r] = g.chunk_end_flat(g.shard_chunk[r]);
    // Buckets of whole chunks from the end of the list.
    size_t end = g.chunks.size();
    while (end > 0) {
      size_t begin = end;
      int64_t length = 0;
      while (begin > 0 && length < bucket_elements) length += g.chunks[--begin].length;
      g.buckets.push_back({begin, end});
      end = begin;
    }
    for (size_t b = 0; b < g.buckets.size(); ++b) {
      const Param<float>* previous = nullptr;
      int64_t distinct = 0;
      for (size_t c = g.buckets[b].first; c < g.buckets[b].second; ++c) {
        if (g.chunks[c].param == previous) continue;
        previous = g.chunks[c].param;
        ++distinct;
        param_buckets_[previous].push_back({static_cast<size_t>(&group - groups_.data()), b});
      }
      g.bucket_params.push_back(distinct);
    }
    const int64_t mine = g.shard_length(g.me());
    g.grad.assign(static_cast<size_t>(mine), 0.0f);
    g.m.assign(static_cast<size_t>(mine), 0.0f);
    g.v.assign(static_cast<size_t>(mine), 0.0f);
  }
  reset_readiness();
}

void Zero1Optimizer::reset_readiness() {
  for (auto& g : groups_) {
    g->pending = g->bucket_params;
    g->next_bucket = 0;
  }
}

int64_t Zero1Optimizer::buckets_reduced() const {
  int64_t n = 0;
  for (auto& g : groups_) n += static_cast<int64_t>(g->next_bucket);
  return n;
}

Zero1Optimizer::~Zero1Optimizer() = default;

int64_t Zero1Optimizer::shard_elements() const {
  int64_t n = 0;
  for (auto& g : groups_) n += g->shard_length(g->me());
  return n;
}

int64_t Zero1Optimizer::num_buckets() const {
  int64_t n = 0;
  for (auto& g : groups_) n += static_cast<int64_t>(g->buckets.size());
  return n;
}

void Zero1Optimizer::reduce_bucket(Group& g, size_t b) {
  const int size = g.comm->size(), me = g.me();
  const int64_t part = g.bucket_max_part(b);
  if (part == 0) return;
  std::vector<float> send(static_cast<size_t>(part * size), 0.0f), recv(static_cast<size_t>(part));
  for (int r = 0; r < size; ++r) {
    auto [lo, hi] = g.bucket_part(b, r);
    g.copy_range(g.buckets[b].first, g.buckets[b].second, lo, hi, /*gradient=*/true,
                 send.data() + r * part);
  }
  g.comm->reduce_scatter_sum(recv.data(), send.data(), part, CommType::F32);
  auto [lo, hi] = g.bucket_part(b, me);
  std::copy(recv.begin(), recv.begin() + (hi - lo), g.grad.begin() + (lo - g.shard_begin(me)));
}

void Zero1Optimizer::grad_ready(const Param<float>& param) {
  auto it = param_buckets_.find(&param);
  if (it == param_buckets_.end()) return;
  for (auto [gi, b] : it->second) {
    Group& g = *groups_[gi];
    FRUGAL_CHECK(g.pending[b] > 0, "ZeRO-1: gradient of {} marked ready twice in one step",
                 param.name);
    --g.pending[b];
    while (g.next_bucket < g.buckets.size() && g.pending[g.next_bucket] == 0)
      reduce_bucket(g, g.next_bucket++);
  }
}

void Zero1Optimizer::reduce_gradients() {
  for (auto& group : groups_)
    while (group->next_bucket < group->buckets.size()) reduce_bucket(*group, group->next_bucket++);
  reset_readiness();
  reduced_ = true;
}

Zero1Optimizer::StepInfo Zero1Optimizer::step(double lr) {
  FRUGAL_CHECK(reduced_, "ZeRO-1: step() without reduce_gradients() first");
  FRUGAL_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: learning rate {} must be finite and >= 0",
               lr);
  reduced_ = false;
  // The global norm: each chunk's sum of squares from its one owner, added in model order.
  std::vector<double> partial(static_cast<size_t>(num_global_chunks_), 0.0);
  for (auto& group : groups_) {
    const Group& g = *group;
    const int me = g.me();
    for (size_t c = g.shard_chunk[me]; c < g.shard_chunk[me + 1]; ++c) {
      const Group::Chunk& k = g.chunks[c];
      if (!k.counted) continue;  // a second copy: its twin's owner counts the chunk
      partial[k.global] = grad_sum_of_squares(g.grad.data() + (k.flat - g.shard_begin(me)), k.length);
    }
  }
  norm_group_.all_reduce_sum(partial.data(), num_global_chunks_, CommType::F64);
  double total = 0.0;
  for (double s : partial) total += s;
  StepInfo info;
  info.grad_norm = std::sqrt(total);
  const ClipDecision clip = clip_for_norm(info.grad_norm, config_.grad_clip);
  info.clip_scale = clip.clip_scale;
  info.skipped = clip.skip;
  if (clip.skip) return info;
  ++step_count_;
  const AdamWScalars scalars = adamw_scalars(config_, lr, info.clip_scale, step_count_);
  for (auto& group : groups_) {
    Group& g = *group;
    const int me = g.me();
    for (size_t c = g.shard_chunk[me]; c < g.shard_chunk[me + 1]; ++c) {
      const Group::Chunk& k = g.chunks[c];
      const int64_t at = k.flat - g.shard_begin(me);
      adamw_update(k.param->value.data() + k.offset, g.grad.data() + at, g.m.data() + at,
                   g.v.data() + at, k.length, k.param->weight_decay, scalars);
    }
  }
  all_gather_parameters();
  return info;
}

void Zero1Optimizer::all_gather_parameters() {
  for (auto& group : groups_) {
    Group& g = *group;
    const int size = g.comm->size(), me = g.me();
    for (size_t b = 0; b < g.buckets.size(); ++b) {
      const int64_t part = g.bucket_max_part(b);
      if (part == 0) continue;
      std::vector<float> send(static_cast<size_t>(part), 0.0f), recv(static_cast<size_t>(part * size));
      auto [lo, hi] = g.bucket_part(b, me);
      g.copy_range(g.buckets[b].first, g.buckets[b].second, lo, hi, /*gradient=*/false, send.data());
      g.comm->all_gather(recv.data(), send.data(), part, CommType::F32);
      for (int r = 0; r < size; ++r) {
        if (r == me) continue;
        auto [rlo, rhi] = g.bucket_part(b, r);
        g.write_values(g.buckets[b].first, g.buckets[b].second, rlo, rhi, recv.data() + r * part);
      }
    }
  }
}

void Zero1Optimizer::gather_full(Transformer<float>* full_model, AdamW<float>* full_optimizer) {
  const bool root = mesh_.dp().rank() == 0;
  FRUGAL_CHECK(root == (full_model != nullptr && full_optimizer != nullptr),
               "ZeRO-1 gather_full: dp rank {} {} a full model and optimizer", mesh_.dp().rank(),
               root ? "needs" : "must not pass");
  // Every group's moments, whole, on the group's rank 0.
  std::vector<std::vector<float>> full_m(groups_.size()), full_v(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = *groups_[gi];
    const int me = g.me();
    if (me != 0) {
      g.comm->send(g.m.data(), g.shard_length(me), CommType::F32, 0, kTagMoments1);
      g.comm->send(g.v.data(), g.shard_length(me), CommType::F32, 0, kTagMoments2);
      continue;
    }
    full_m[gi].resize(static_cast<size_t>(g.total));
    full_v[gi].resize(static_cast<size_t>(g.total));
    std::copy(g.m.begin(), g.m.end(), full_m[gi].begin());
    std::copy(g.v.begin(), g.v.end(), full_v[gi].begin());
    for (int r = 1; r < g.comm->size(); ++r) {
      g.comm->recv(full_m[gi].data() + g.shard_begin(r), g.shard_length(r), CommType::F32, r,
                   kTagMoments1);
      g.comm->recv(full_v[gi].data() + g.shard_begin(r), g.shard_length(r), CommType::F32, r,
                   kTagMoments2);
    }
  }
  // Expert parallelism: EP group 0's other ranks send their experts (values and moments) to
  // dp rank 0 (= EP rank 0 of EP group 0).
  const bool experts_apart = groups_.size() == 2;
  std::vector<std::vector<float>> peer_values, peer_m, peer_v;  // [ep rank] on the root
  if (experts_apart && mesh_.coords().ep_group == 0) {
    Group& g = *groups_[1];
    Communicator& ep = mesh_.ep();
    if (ep.rank() != 0) {
      std::vector<float> values(static_cast<size_t>(g.total));
      g.copy_range(0, g.chunks.size(), 0, g.total, /*gradient=*/false, values.data());
      ep.send(values.data(), g.total, CommType::F32, 0, kTagValues);
      ep.send(full_m[1].data(), g.total, CommType::F32, 0, kTagMoments1);
      ep.send(full_v[1].data(), g.total, CommType::F32, 0, kTagMoments2);
    } else {
      peer_values.resize(static_cast<size_t>(ep.size()));
      peer_m.resize(peer_values.size());
      peer_v.resize(peer_values.size());
      for (int r = 1; r < ep.size(); ++r) {
        peer_values[r].resize(static_cast<size_t>(g.total));
        peer_m[r].resize(static_cast<size_t>(g.total));
        peer_v[r].resize(static_cast<size_t>(g.total));
        ep.recv(peer_values[r].data(), g.total, CommType::F32, r, kTagValues);
        ep.recv(peer_m[r].data(), g.total, CommType::F32, r, kTagMoments1);
        ep.recv(peer_v[r].data(), g.total, CommType::F32, r, kTagMoments2);
      }
    }
  }
  if (!root) return;

  // Assemble by name: held parameters from here, other experts from their EP rank's flat lists
  // (each EP rank's expert list is the global layout's experts of its slice, in order).
  std::unordered_map<std::string, std::pair<size_t, int64_t>> flat_of;  // name -> (group, offset)
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi]->params.size(); ++i)
      flat_of[groups_[gi]->params[i]->name] = {gi, groups_[gi]->param_flat[i]};
  const int64_t experts_per_rank = experts_per_rank_;
  std::vector<int64_t> peer_offset(peer_values.size(), 0);
  for (const GlobalParam& gp : layout_) {
    if (gp.elsewhere) continue;  // another pipeline stage gathers it
    Param<float>& target = full_model->params().get(gp.name);
    FRUGAL_CHECK(target.numel() == gp.numel, "ZeRO-1 gather_full: {} has {} elements here, {} in "
                 "the full model", gp.name, gp.numel, target.numel());
    if (gp.local) {
      target.value = gp.local->value;
      if (!gp.trainable) continue;
      auto [gi, at] = flat_of.at(gp.name);
      full_optimizer->set_state(
          gp.name, std::vector<float>(full_m[gi].begin() + at, full_m[gi].begin() + at + gp.numel),
          std::vector<float>(full_v[gi].begin() + at, full_v[gi].begin() + at + gp.numel));
      continue;
    }
    const size_t r = static_cast<size_t>(gp.expert / experts_per_rank);
    FRUGAL_CHECK(gp.trainable && r < peer_values.size() && r > 0,
                 "ZeRO-1 gather_full: no rank sent {}", gp.name);
    const int64_t at = peer_offset[r];
    peer_offset[r] += gp.numel;
    target.value.assign(peer_values[r].begin() + at, peer_values[r].begin() + at + gp.numel);
    full_optimizer->set_state(
        gp.name, std::vector<float>(peer_m[r].begin() + at, peer_m[r].begin() + at + gp.numel),
        std::vector<float>(peer_v[r].begin() + at, peer_v[r].begin() + at + gp.numel));
  }
  full_optimizer->set_step_count(step_count_);
}

void Zero1Optimizer::load(const std::string& checkpoint_dir) {
  const std::string path = (std::filesystem::path(checkpoint_dir) / "optimizer.safetensors").string();
  SafetensorsFile file = SafetensorsFile::open(path);
  int64_t trainable = 0;
  for (const GlobalParam& g : layout_) trainable += g.trainable ? 1 : 0;
  FRUGAL_CHECK(static_cast<int64_t>(file.names().size()) == 2 * trainable,
               "{}: holds {} tensors, this model's optimizer has {} (a different model?)", path,
               file.names().size(), 2 * trainable);
  auto it = file.metadata().find("step_count");
  FRUGAL_CHECK(it != file.metadata().end(), "{}: no step_count in the metadata", path);
  const int64_t steps = parse_int64(it->second).value_or(-1);
  FRUGAL_CHECK(steps >= 0, "{}: step_count = '{}' is not a non-negative integer", path, it->second);

  fill_shards([&](const Param<float>& param, std::vector<float>& m, std::vector<float>& v) {
    for (const std::string& name : {param.name + ".exp_avg", param.name + ".exp_avg_sq"}) {
      FRUGAL_CHECK(file.contains(name), "{}: tensor {} is missing", path, name);
      const TensorInfo& info = file.info(name);
      FRUGAL_CHECK(info.dtype == DType::F32, "{}: tensor {} has dtype {}, expected F32", path,
                   name, dtype_name(info.dtype));
      FRUGAL_CHECK(static_cast<int64_t>(info.numel()) == param.numel(),
                   "{}: tensor {} has {} elements, the parameter has {}", path, name,
                   info.numel(), param.numel());
    }
    file.read_as(param.name + ".exp_avg", m);
    file.read_as(param.name + ".exp_avg_sq", v);
  });
  step_count_ = steps;
}

void Zero1Optimizer::load_state(const AdamW<float>& full) {
  std::unordered_map<std::string, const AdamW<float>::ParamState*> states;
  for (const auto& s : full.state()) states[s.name] = &s;
  fill_shards([&](const Param<float>& param, std::vector<float>& m, std::vector<float>& v) {
    auto it = states.find(param.name);
    FRUGAL_CHECK(it != states.end(), "ZeRO-1 load_state: the optimizer has no state for {}",
                 param.name);
    FRUGAL_CHECK(static_cast<int64_t>(it->second->m.size()) == param.numel(),
                 "ZeRO-1 load_state: {} has {} moments, the parameter {} elements", param.name,
                 it->second->m.size(), param.numel());
    m = it->second->m;
    v = it->second->v;
  });
  step_count_ = full.step_count();
}

void Zero1Optimizer::fill_shards(
    const std::function<void(const Param<float>&, std::vector<float>&, std::vector<float>&)>&
        read) {
  for (auto& group : groups_) {
    Group& g = *group;
    const int me = g.me();
    const Param<float>* loaded = nullptr;
    std::vector<float> m, v;
    for (size_t c = g.shard_chunk[me]; c < g.shard_chunk[me + 1]; ++c) {
      const Group::Chunk& k = g.chunks[c];
      if (k.param != loaded) {
        read(*k.param, m, v);
        loaded = k.param;
      }
      const int64_t at = k.flat - g.shard_begin(me);
      std::copy_n(m.begin() + k.offset, k.length, g.m.begin() + at);
      std::copy_n(v.begin() + k.offset, k.length, g.v.begin() + at);
    }
  }
}

}  // namespace frugal
