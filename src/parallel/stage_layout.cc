// The split of the decoder layers over the pipeline stages (see stage_layout.h): the even split,
// explicit lists, the FLOP cost model and the cost-balanced split (dynamic programming).
#include "parallel/stage_layout.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace frugal {

using pipeline::ScheduleKind;

int64_t StageLayout::begin(int stage) const {
  FRUGAL_CHECK(stage >= 0 && stage < stages(), "pipeline: stage {} of {} stages", stage, stages());
  return std::accumulate(layers.begin(), layers.begin() + stage, int64_t{0});
}

int64_t StageLayout::end(int stage) const { return begin(stage) + layers.at(stage); }

std::string StageLayout::text() const {
  std::string out;
  for (size_t s = 0; s < layers.size(); ++s) out += fmt::format("{}{}", s ? "," : "", layers[s]);
  return out;
}

StageLayout even_stage_layout(int64_t layers, int stages) {
  FRUGAL_CHECK(stages >= 1, "pipeline: {} stages", stages);
  FRUGAL_CHECK(layers >= stages,
               "pipeline: {} decoder layers cannot fill {} stages evenly (every stage needs at "
               "least one; lower train.pp or use more layers)",
               layers, stages);
  StageLayout layout;
  const int64_t base = layers / stages, extra = layers % stages;
  for (int s = 0; s < stages; ++s) layout.layers.push_back(base + (s < extra ? 1 : 0));
  return layout;
}

namespace {

// The fewest layers stage `stage` of `stages` may hold: 0 at the ends of a real pipeline.
int64_t min_layers(int stage, int stages) {
  return stages >= 2 && (stage == 0 || stage == stages - 1) ? 0 : 1;
}

}  // namespace

void check_stage_layout(const StageLayout& layout, int64_t layers, int stages,
                        const std::string& key) {
  FRUGAL_CHECK(layout.stages() == stages,
               "{} = \"{}\" has {} entries, but the pipeline has {} stages (one entry per stage: "
               "2 * train.pp under DualPipeV, train.pp otherwise)",
               key, layout.text(), layout.stages(), stages);
  int64_t sum = 0;
  for (int s = 0; s < stages; ++s) {
    const int64_t n = layout.layers[s];
    FRUGAL_CHECK(n >= min_layers(s, stages),
                 "{} = \"{}\": stage {} holds {} layers; {}", key, layout.text(), s, n,
                 stages == 1 ? "the only stage holds every layer"
                             : "a middle stage needs at least 1 (only the first and the last "
                               "stage, which also hold the embedding / the head, may hold 0)");
    sum += n;
  }
  FRUGAL_CHECK(sum == layers, "{} = \"{}\" sums to {} layers, but model.num_hidden_layers = {}",
               key, layout.text(), sum, layers);
}

// ---- cost model ---------------------------------------------------------------------------------

double decoder_layer_flops(const ModelConfig& cfg, int64_t layer, int64_t seq) {
  const double d = static_cast<double>(cfg.hidden_size);
  const double heads = static_cast<double>(cfg.num_attention_heads);
  const double qk = static_cast<double>(cfg.qk_head_dim());
  const double v = static_cast<double>(cfg.v_head_dim);
  const double kv_rank = static_cast<double>(cfg.kv_lora_rank);
  // Multiply-accumulates per token.
  double attention = cfg.q_lora_rank > 0
                         ? d * cfg.q_lora_rank + static_cast<double>(cfg.q_lora_rank) * heads * qk
                         : d * heads * qk;
  attention += d * (kv_rank + static_cast<double>(cfg.qk_rope_head_dim));  // kv_a
  attention += kv_rank * heads * (static_cast<double>(cfg.qk_nope_head_dim) + v);  // kv_b
  attention += heads * v * d;                                                        // o_proj
  // Causal core: QK^T and PV over (seq + 1) / 2 keys per query on average.
  attention += heads * (qk + v) * (static_cast<double>(seq) + 1.0) / 2.0;
  double ffn = 0;
  if (cfg.is_moe_layer(layer)) {
    const double experts =
        static_cast<double>(cfg.num_experts_per_tok + cfg.n_shared_experts);
    ffn = d * static_cast<double>(cfg.n_routed_experts)  // router
          + experts * 3.0 * d * static_cast<double>(cfg.moe_intermediate_size);
  } else {
    ffn = 3.0 * d * static_cast<double>(cfg.intermediate_size);
  }
  return 2.0 * (attention + ffn);
}

StageCostModel stage_cost_model(const ModelConfig& cfg, int64_t seq) {
  StageCostModel model;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    model.layer.push_back(decoder_layer_flops(cfg, i, seq));
  const double d = static_cast<double>(cfg.hidden_size);
  const double head = 2.0 * d * static_cast<double>(cfg.vocab_size);
  model.first_extra = 0;  // a gather
  model.last_extra = head;
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k)
    model.last_extra += decoder_layer_flops(cfg, cfg.num_hidden_layers + k, seq) +
                        2.0 * (2.0 * d * d)  // projection of [norm(h); norm(emb)]
                        + head;
  return model;
}

// ---- ranks --------------------------------------------------------------------------------------

std::vector<int> stages_of_rank(ScheduleKind kind, int stages, int rank) {
  const int ranks = pipeline_rank_count(kind, stages);
  FRUGAL_CHECK(rank >= 0 && rank < ranks, "pipeline: rank {} of {}", rank, ranks);
  switch (kind) {
    case ScheduleKind::OneFOneB:
    case ScheduleKind::ZB1P: return {rank};
    case ScheduleKind::DualPipeV: return {rank, stages - 1 - rank};
    case ScheduleKind::DualPipe: {
      const int near = std::min(rank, stages - 1 - rank);
      if (near == stages - 1 - near) return {near};  // one stage of one
      return {near, stages - 1 - near};
    }
  }
  fail("pipeline: unknown schedule kind");
}

int pipeline_rank_count(ScheduleKind kind, int stages) {
  return kind == ScheduleKind::DualPipeV ? stages / 2 : stages;
}

double stage_cost(const StageCostModel& model, const StageLayout& layout, int stage) {
  double cost = 0;
  for (int64_t i = layout.begin(stage); i < layout.end(stage); ++i) cost += model.layer.at(i);
  if (stage == 0) cost += model.first_extra;
  if (stage == layout.stages() - 1) cost += model.last_extra;
  return cost;
}

std::vector<double> rank_costs(const StageCostModel& model, const StageLayout& layout,
                               ScheduleKind kind) {
  std::vector<double> costs;
  for (int r = 0; r < pipeline_rank_count(kind, layout.stages()); ++r) {
    double cost = 0;
    for (int s : stages_of_rank(kind, layout.stages(), r)) cost += stage_cost(model, layout, s);
    costs.push_back(cost);
  }
  return costs;
}

// ---- the balanced split -------------------------------------------------------------------------

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Shared by both searches: prefix sums of the layer costs and the stage extras.
struct Costs {
  std::vector<double> prefix;  // [L + 1]
  double first_extra = 0, last_extra = 0;
  double tolerance = 0, square_tolerance = 0;  // of a cost, of a sum of squared costs
  int stages = 0;
  int64_t layers() const { return static_cast<int64_t>(prefix.size()) - 1; }
  // Cost of stage `stage` holding layers [begin, end).
  double stage(int stage, int64_t begin, int64_t end) const {
    double c = prefix[end] - prefix[begin];
    if (stage == 0) c += first_extra;
    if (stage == stages - 1) c += last_extra;
    return c;
  }
};

// Both searches run two passes: pass 1 finds the smallest largest rank cost C; pass 2, with every
// rank's cost capped at C, the smallest sum of squared stage costs (the most even stages among the
// best splits: a uniform model gets the even split). Among equal values (within a relative 1e-9)
// earlier stages hold more layers.

// 1F1B, ZB1P: rank s holds stage s alone, stages contiguous in rank order. best(s, i): the value of
// stages s.. holding layers [i, L).
class LinearSplit {
 public:
  explicit LinearSplit(const Costs& costs)
      : c_(costs), value_(costs.stages * (costs.layers() + 1), -1.0),
        end_(costs.stages * (costs.layers() + 1), -1) {}

  StageLayout solve() {
    const double cap = best(0, 0);
    FRUGAL_CHECK(cap < kInfinity, "pipeline: {} decoder layers cannot fill {} stages", c_.layers(),
                 c_.stages);
    pass_ = 2;
    cap_ = cap + c_.tolerance;
    std::fill(value_.begin(), value_.end(), -1.0);
    FRUGAL_CHECK(best(0, 0) < kInfinity, "pipeline: stage split search failed");
    StageLayout layout;
    int64_t i = 0;
    for (int s = 0; s < c_.stages; ++s) {
      const int64_t e = end_[index(s, i)];
      layout.layers.push_back(e - i);
      i = e;
    }
    return layout;
  }

 private:
  size_t index(int s, int64_t i) const { return static_cast<size_t>(s * (c_.layers() + 1) + i); }

  double best(int s, int64_t i) {
    const int64_t L = c_.layers();
    double& memo = value_[index(s, i)];
    if (memo >= 0) return memo;
    const double tol = pass_ == 1 ? c_.tolerance : c_.square_tolerance;
    double result = kInfinity;
    int64_t chosen = -1;
    if (s == c_.stages - 1) {
      const double cost = c_.stage(s, i, L);
      if (L - i >= min_layers(s, c_.stages) && (pass_ == 1 || cost <= cap_)) {
        result = pass_ == 1 ? cost : cost * cost;
        chosen = L;
      }
    } else {
      // The stages after s: the middle ones need one layer each, the last none.
      const int64_t after = std::max(0, c_.stages - 2 - s);
      for (int64_t e = L - after; e >= i + min_layers(s, c_.stages); --e) {  // most layers first
        const double cost = c_.stage(s, i, e);
        if (pass_ == 2 && cost > cap_) continue;
        const double rest = best(s + 1, e);
        const double v = pass_ == 1 ? std::max(cost, rest) : cost * cost + rest;
        if (v < result - tol) {
          result = v;
          chosen = e;
        }
      }
    }
    end_[index(s, i)] = chosen;
    memo = result;
    return result;
  }

  const Costs& c_;
  int pass_ = 1;
  double cap_ = kInfinity;
  std::vector<double> value_;
  std::vector<int64_t> end_;
};

// DualPipe, DualPipeV: level r (rank r, and under DualPipe also rank P-1-r) holds stage r, layers
// [i, a), and stage S-1-r, layers [b, j), of what the outer levels left, [i, j); the inner levels
// share [a, b) (the innermost level: a == b). best(r, i, j): the value of levels r.. on [i, j).
// Among equal values the larger a, then the larger b.
class NestedSplit {
 public:
  explicit NestedSplit(const Costs& costs) : c_(costs), levels_(costs.stages / 2) {
    const size_t n = static_cast<size_t>(levels_) * (c_.layers() + 1) * (c_.layers() + 1);
    FRUGAL_CHECK(n <= 4'000'000,  // ~100 MB of memo (L = 256 over 64 stages fits)
                 "pipeline: the automatic stage split of {} layers over {} stages is too large a "
                 "search; give train.pp_stage_layers explicitly",
                 c_.layers(), c_.stages);
    value_.assign(n, -1.0);
    choice_.assign(n, {-1, -1});
  }

  StageLayout solve() {
    const int64_t L = c_.layers();
    const double cap = best(0, 0, L);
    FRUGAL_CHECK(cap < kInfinity, "pipeline: {} decoder layers cannot fill {} stages", L, c_.stages);
    pass_ = 2;
    cap_ = cap + c_.tolerance;
    std::fill(value_.begin(), value_.end(), -1.0);
    FRUGAL_CHECK(best(0, 0, L) < kInfinity, "pipeline: stage split search failed");
    StageLayout layout;
    layout.layers.assign(c_.stages, 0);
    int64_t i = 0, j = L;
    for (int r = 0; r < levels_; ++r) {
      const auto [a, b] = choice_[index(r, i, j)];
      layout.layers[r] = a - i;
      layout.layers[c_.stages - 1 - r] = j - b;
      i = a;
      j = b;
    }
    return layout;
  }

 private:
  size_t index(int r, int64_t i, int64_t j) const {
    const size_t n = static_cast<size_t>(c_.layers() + 1);
    return (static_cast<size_t>(r) * n + static_cast<size_t>(i)) * n + static_cast<size_t>(j);
  }

  double best(int r, int64_t i, int64_t j) {
    double& memo = value_[index(r, i, j)];
    if (memo >= 0) return memo;
    const int left = r, right = c_.stages - 1 - r;
    const int64_t min_left = min_layers(left, c_.stages), min_right = min_layers(right, c_.stages);
    const bool innermost = r == levels_ - 1;
    const int64_t inner_min = innermost ? 0 : c_.stages - 2 * (r + 1);  // middle stages: 1 each
    const double tol = pass_ == 1 ? c_.tolerance : c_.square_tolerance;
    double result = kInfinity;
    std::pair<int64_t, int64_t> chosen{-1, -1};
    for (int64_t a = i + min_left; a + inner_min + min_right <= j; ++a) {
      const double left_cost = c_.stage(left, i, a);  // grows with a
      if (pass_ == 1 ? left_cost > result + tol
                     : left_cost > cap_ || left_cost * left_cost > result + tol)
        break;
      const int64_t b_low = a + inner_min, b_high = innermost ? a : j - min_right;
      for (int64_t b = b_high; b >= b_low; --b) {  // the right cost grows as b falls
        const double right_cost = c_.stage(right, b, j);
        const double level = left_cost + right_cost;
        const double squares = left_cost * left_cost + right_cost * right_cost;
        if (pass_ == 1 ? level > result + tol : level > cap_ || squares > result + tol) break;
        const double rest = innermost ? 0.0 : best(r + 1, a, b);
        const double v = pass_ == 1 ? std::max(level, rest) : squares + rest;
        const bool better = v < result - tol;
        const bool tie = !better && v <= result + tol && std::make_pair(a, b) > chosen;
        if (v < kInfinity && (better || tie)) {
          result = std::min(result, v);
          chosen = {a, b};
        }
      }
    }
    choice_[index(r, i, j)] = chosen;
    memo = result;
    return result;
  }

  const Costs& c_;
  int levels_ = 0;
  int pass_ = 1;
  double cap_ = kInfinity;
  std::vector<double> value_;
  std::vector<std::pair<int64_t, int64_t>> choice_;
};

}  // namespace

StageLayout balanced_stage_layout(const StageCostModel& model, ScheduleKind kind, int stages) {
  const int64_t L = static_cast<int64_t>(model.layer.size());
  FRUGAL_CHECK(stages >= 1, "pipeline: {} stages", stages);
  if (stages == 1) return StageLayout{{L}};
  Costs costs;
  costs.stages = stages;
  costs.first_extra = model.first_extra;
  costs.last_extra = model.last_extra;
  costs.prefix.assign(L + 1, 0.0);
  for (int64_t i = 0; i < L; ++i) {
    FRUGAL_CHECK(model.layer[i] >= 0, "pipeline: negative cost of layer {}", i);
    costs.prefix[i + 1] = costs.prefix[i] + model.layer[i];
  }
  const double total = costs.prefix[L] + model.first_extra + model.last_extra;
  costs.tolerance = 1e-9 * total;
  costs.square_tolerance = 1e-9 * total * total;
  const bool paired = kind == ScheduleKind::DualPipe || kind == ScheduleKind::DualPipeV;
  if (!paired) return LinearSplit(costs).solve();
  FRUGAL_CHECK(stages % 2 == 0, "pipeline: {} needs an even stage count, got {}",
               pipeline::schedule_kind_name(kind), stages);
  return NestedSplit(costs).solve();
}

// ---- the setting --------------------------------------------------------------------------------

std::vector<int64_t> parse_stage_layers(const std::string& setting, const std::string& key) {
  if (setting == "auto" || setting == "even") return {};
  std::string body;
  for (char ch : setting)
    if (!std::isspace(static_cast<unsigned char>(ch))) body += ch;
  if (body.size() >= 2 && body.front() == '[' && body.back() == ']')
    body = body.substr(1, body.size() - 2);
  std::vector<int64_t> counts;
  size_t pos = 0;
  while (!body.empty()) {
    const size_t comma = body.find(',', pos);
    const std::string item = body.substr(pos, comma == std::string::npos ? std::string::npos
                                                                         : comma - pos);
    const bool digits = !item.empty() && std::all_of(item.begin(), item.end(), [](char ch) {
      return std::isdigit(static_cast<unsigned char>(ch)) || ch == '-';
    });
    int64_t n = 0;
    bool ok = digits && item.size() <= 18;
    if (ok) {
      try {
        size_t used = 0;
        n = std::stoll(item, &used);
        ok = used == item.size();
      } catch (const std::exception&) {
        ok = false;
      }
    }
    FRUGAL_CHECK(ok,
                 "{} = \"{}\": expected \"auto\", \"even\" or a list of layer counts per stage "
                 "such as \"3,4,3,2\" (or [3, 4, 3, 2]); \"{}\" is not an integer",
                 key, setting, item);
    FRUGAL_CHECK(n >= 0, "{} = \"{}\": layer count {} is negative", key, setting, n);
    counts.push_back(n);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  FRUGAL_CHECK(!counts.empty(),
               "{} = \"{}\": expected \"auto\", \"even\" or a list of layer counts per stage such "
               "as \"3,4,3,2\"",
               key, setting);
  return counts;
}

StageLayout resolve_stage_layout(const std::string& setting, const ModelConfig& cfg,
                                 ScheduleKind kind, int stages, int64_t seq, const std::string& key) {
  const std::vector<int64_t> counts = parse_stage_layers(setting, key);
  const int64_t L = cfg.num_hidden_layers;
  if (!counts.empty()) {
    const StageLayout layout{counts};
    check_stage_layout(layout, L, stages, key);
    return layout;
  }
  if (stages == 1) return StageLayout{{L}};
  if (setting == "even") return even_stage_layout(L, stages);
  return balanced_stage_layout(stage_cost_model(cfg, seq), kind, stages);
}

std::string describe_stage_layout(const std::string& setting, const StageLayout& layout,
                                  const ModelConfig& cfg, ScheduleKind kind, int64_t seq) {
  const StageCostModel model = stage_cost_model(cfg, seq);
  const std::vector<double> costs = rank_costs(model, layout, kind);
  const double total =
      std::accumulate(model.layer.begin(), model.layer.end(), model.first_extra + model.last_extra);
  // DualPipe's ranks r and P-1-r hold the same stages: the ideal is per distinct pair.
  const double groups = kind == ScheduleKind::DualPipe ? costs.size() / 2.0
                                                       : static_cast<double>(costs.size());
  const double worst = *std::max_element(costs.begin(), costs.end());
  std::string ranks;
  for (size_t r = 0; r < costs.size(); ++r) ranks += fmt::format(" {:.4g}", costs[r] / 1e9);
  std::string ranges;
  for (int s = 0; s < layout.stages(); ++s)
    ranges += fmt::format(" [{},{})", layout.begin(s), layout.end(s));
  const bool listed = setting != "auto" && setting != "even";
  return fmt::format(
      "pipeline stage split ({}, {}): layers per stage {} ={}; forward GFLOP/token per rank{} "
      "(largest / ideal {:.3f})",
      listed ? "train.pp_stage_layers" : setting, pipeline::schedule_kind_name(kind),
      layout.text(), ranges, ranks, worst / (total / groups));
}

}  // namespace frugal
