// The pipeline stage split (parallel/stage_layout.h), pure functions (one rank):
//   - the even split and the checks of an explicit split (count, sum, empty middle stages; 0 allowed
//     on the first and last stage only);
//   - the automatic split on synthetic cost models: uniform layers without head cost give the even
//     split back (every schedule kind, many L and S), one stage holds the whole model, a heavy head
//     moves layers off the last stage (and off rank 0 under DualPipeV, which holds it), and the
//     result is the exhaustive search's optimum on small cases (largest rank cost);
//   - bench-1b (configs/bench-1b.toml) under 1F1B and DualPipeV over 2 ranks: the split's largest
//     rank cost is within one layer's cost of the ideal (total / ranks), and better than the even
//     split's (printed); DeepSeek-V3 (61 layers) under DualPipe over 16 ranks, DualPipeV over 8
//     and 1F1B over 16 likewise within one layer (printed);
//   - the cost model: head and MTP terms, a dense and a MoE layer against hand-computed FLOPs;
//   - the setting: "auto", "even", lists with and without brackets; bad text refused naming the key.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>

#include "core/error.h"
#include "io/config_io.h"
#include "parallel/stage_layout.h"

namespace frugal {
namespace {

using pipeline::ScheduleKind;

const ScheduleKind kKinds[] = {ScheduleKind::OneFOneB, ScheduleKind::ZB1P, ScheduleKind::DualPipe,
                               ScheduleKind::DualPipeV};

bool paired(ScheduleKind kind) {
  return kind == ScheduleKind::DualPipe || kind == ScheduleKind::DualPipeV;
}

StageCostModel uniform(int64_t layers, double first = 0, double last = 0) {
  return StageCostModel{std::vector<double>(layers, 1.0), first, last};
}

double largest(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

void expect_error_mentions(const std::function<void()>& f, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(StageLayout, EvenSplitAndRanges) {
  const StageLayout even = even_stage_layout(7, 3);
  EXPECT_EQ(even.layers, (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(even.range(0), (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(even.range(2), (std::pair<int64_t, int64_t>{5, 7}));
  EXPECT_EQ(even.text(), "3,2,2");
  EXPECT_THROW(even_stage_layout(2, 3), Error);
  EXPECT_THROW(even.range(3), Error);
}

TEST(StageLayout, ExplicitSplitIsChecked) {
  const std::string key = "train.pp_stage_layers";
  EXPECT_NO_THROW(check_stage_layout({{3, 4, 3, 2}}, 12, 4, key));
  EXPECT_NO_THROW(check_stage_layout({{0, 6, 6, 0}}, 12, 4, key));  // the ends may be empty
  EXPECT_NO_THROW(check_stage_layout({{12}}, 12, 1, key));
  expect_error_mentions([&] { check_stage_layout({{3, 4, 5}}, 12, 4, key); }, "has 3 entries");
  expect_error_mentions([&] { check_stage_layout({{3, 4, 3, 3}}, 12, 4, key); }, "sums to 13");
  expect_error_mentions([&] { check_stage_layout({{3, 0, 7, 2}}, 12, 4, key); }, "middle stage");
  expect_error_mentions([&] { check_stage_layout({{0}}, 12, 1, key); }, "only stage");
  expect_error_mentions([&] { check_stage_layout({{3, 4, 5}}, 12, 4, key); }, key);
}

TEST(StageLayout, ParsesTheSetting) {
  const std::string key = "train.pp_stage_layers";
  EXPECT_TRUE(parse_stage_layers("auto", key).empty());
  EXPECT_TRUE(parse_stage_layers("even", key).empty());
  EXPECT_EQ(parse_stage_layers("3,4,3,2", key), (std::vector<int64_t>{3, 4, 3, 2}));
  EXPECT_EQ(parse_stage_layers("[3, 4, 3, 2]", key), (std::vector<int64_t>{3, 4, 3, 2}));
  EXPECT_EQ(parse_stage_layers("0,12", key), (std::vector<int64_t>{0, 12}));
  for (const char* bad : {"", "balanced", "3,,2", "3,x", "3,-1", "[3,4", "3.5,2"})
    expect_error_mentions([&] { parse_stage_layers(bad, key); }, key);
}

TEST(StageLayout, StagesOfRanks) {
  EXPECT_EQ(stages_of_rank(ScheduleKind::OneFOneB, 4, 2), (std::vector<int>{2}));
  EXPECT_EQ(stages_of_rank(ScheduleKind::DualPipeV, 4, 0), (std::vector<int>{0, 3}));
  EXPECT_EQ(stages_of_rank(ScheduleKind::DualPipeV, 4, 1), (std::vector<int>{1, 2}));
  EXPECT_EQ(stages_of_rank(ScheduleKind::DualPipe, 4, 3), (std::vector<int>{0, 3}));
  EXPECT_EQ(stages_of_rank(ScheduleKind::DualPipe, 4, 2), (std::vector<int>{1, 2}));
  EXPECT_EQ(pipeline_rank_count(ScheduleKind::DualPipeV, 8), 4);
  EXPECT_EQ(pipeline_rank_count(ScheduleKind::DualPipe, 8), 8);
}

TEST(StageLayout, UniformModelWithoutHeadCostGetsTheEvenSplit) {
  int checked = 0;
  for (ScheduleKind kind : kKinds)
    for (int stages = 1; stages <= 8; ++stages) {
      if (paired(kind) && stages % 2 != 0) continue;
      for (int64_t layers = stages; layers <= 24; ++layers) {
        const StageLayout got = balanced_stage_layout(uniform(layers), kind, stages);
        EXPECT_EQ(got, even_stage_layout(layers, stages))
            << pipeline::schedule_kind_name(kind) << " L=" << layers << " S=" << stages
            << ": got " << got.text();
        ++checked;
      }
    }
  EXPECT_GT(checked, 300);
}

TEST(StageLayout, OneStageHoldsTheWholeModel) {
  for (ScheduleKind kind : {ScheduleKind::OneFOneB, ScheduleKind::ZB1P})
    EXPECT_EQ(balanced_stage_layout(uniform(9, 0, 5), kind, 1).layers,
              (std::vector<int64_t>{9}));
  ModelConfig cfg;
  cfg.num_hidden_layers = 7;
  EXPECT_EQ(resolve_stage_layout("auto", cfg, ScheduleKind::OneFOneB, 1, 128).layers,
            (std::vector<int64_t>{7}));
  EXPECT_EQ(resolve_stage_layout("even", cfg, ScheduleKind::OneFOneB, 1, 128).layers,
            (std::vector<int64_t>{7}));
}

TEST(StageLayout, HeavyHeadMovesLayersOffItsRank) {
  // 1F1B, 12 unit layers, head worth 4: stages of 8 and 4 (+4) balance at 8.
  EXPECT_EQ(balanced_stage_layout(uniform(12, 0, 4), ScheduleKind::OneFOneB, 2).layers,
            (std::vector<int64_t>{8, 4}));
  // DualPipeV over 2 ranks: rank 0 holds stages 0 and 3 (+ head 4): it gets 4 layers, rank 1 8;
  // the most even stages: 4, 4, 4, 0 (stage costs 4 each, the last one all head).
  EXPECT_EQ(balanced_stage_layout(uniform(12, 0, 4), ScheduleKind::DualPipeV, 4).layers,
            (std::vector<int64_t>{4, 4, 4, 0}));
  // A head worth more than the rest: the last stage holds no layer.
  EXPECT_EQ(balanced_stage_layout(uniform(3, 0, 10), ScheduleKind::OneFOneB, 2).layers,
            (std::vector<int64_t>{3, 0}));
  // Middle stages never go empty.
  const StageLayout many = balanced_stage_layout(uniform(4, 0, 100), ScheduleKind::OneFOneB, 4);
  EXPECT_EQ(many.layers, (std::vector<int64_t>{2, 1, 1, 0}));
}

// Every split allowed by check_stage_layout, its largest rank cost: the search's optimum.
double exhaustive_best(const StageCostModel& model, ScheduleKind kind, int stages) {
  const int64_t layers = static_cast<int64_t>(model.layer.size());
  double best = 1e300;
  StageLayout layout;
  layout.layers.assign(stages, 0);
  std::function<void(int, int64_t)> place = [&](int s, int64_t left) {
    if (s == stages - 1) {
      layout.layers[s] = left;
      try {
        check_stage_layout(layout, layers, stages, "test");
      } catch (const Error&) {
        return;
      }
      best = std::min(best, largest(rank_costs(model, layout, kind)));
      return;
    }
    for (int64_t n = 0; n <= left; ++n) {
      layout.layers[s] = n;
      place(s + 1, left - n);
    }
  };
  place(0, layers);
  return best;
}

TEST(StageLayout, AutomaticSplitReachesTheExhaustiveOptimum) {
  int checked = 0;
  for (ScheduleKind kind : kKinds)
    for (int stages : {2, 3, 4, 6}) {
      if (paired(kind) && stages % 2 != 0) continue;
      for (int64_t layers : {6, 7, 9}) {
        for (uint64_t seed = 0; seed < 4; ++seed) {
          StageCostModel model;
          for (int64_t i = 0; i < layers; ++i)  // uneven layers: dense first, MoE later
            model.layer.push_back(1.0 + 0.37 * static_cast<double>((i * 7 + seed * 3) % 5));
          model.first_extra = 0.1 * static_cast<double>(seed);
          model.last_extra = 1.3 * static_cast<double>(seed);
          const StageLayout got = balanced_stage_layout(model, kind, stages);
          EXPECT_NO_THROW(check_stage_layout(got, layers, stages, "auto")) << got.text();
          const double want = exhaustive_best(model, kind, stages);
          EXPECT_NEAR(largest(rank_costs(model, got, kind)), want, 1e-9 * want)
              << pipeline::schedule_kind_name(kind) << " L=" << layers << " S=" << stages
              << " seed " << seed << ": " << got.text();
          ++checked;
        }
      }
    }
  EXPECT_GT(checked, 100);
}

TEST(StageLayout, CostModelTerms) {
  ModelConfig cfg;
  cfg.vocab_size = 1000;
  cfg.hidden_size = 64;
  cfg.intermediate_size = 200;
  cfg.moe_intermediate_size = 32;
  cfg.num_hidden_layers = 3;
  cfg.num_nextn_predict_layers = 1;
  cfg.num_attention_heads = 4;
  cfg.q_lora_rank = 48;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 8;
  cfg.n_routed_experts = 8;
  cfg.n_shared_experts = 1;
  cfg.num_experts_per_tok = 2;
  cfg.first_k_dense_replace = 1;
  const int64_t seq = 9;
  const double attention = 64.0 * 48 + 48.0 * 4 * 12 + 64.0 * (16 + 4) + 16.0 * 4 * (8 + 8) +
                           4.0 * 8 * 64 + 4.0 * (12 + 8) * (seq + 1) / 2.0;
  const double dense = 2 * (attention + 3.0 * 64 * 200);
  const double moe = 2 * (attention + 64.0 * 8 + 3.0 * 3.0 * 64 * 32);
  EXPECT_DOUBLE_EQ(decoder_layer_flops(cfg, 0, seq), dense);
  EXPECT_DOUBLE_EQ(decoder_layer_flops(cfg, 1, seq), moe);
  const StageCostModel model = stage_cost_model(cfg, seq);
  ASSERT_EQ(model.layer.size(), 3u);
  EXPECT_EQ(model.first_extra, 0.0);
  const double head = 2.0 * 64 * 1000;
  EXPECT_DOUBLE_EQ(model.last_extra, head + (moe + 2.0 * 2 * 64 * 64 + head));
  cfg.num_nextn_predict_layers = 0;
  EXPECT_DOUBLE_EQ(stage_cost_model(cfg, seq).last_extra, head);
}

Config bench_1b() {
  return load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/bench-1b.toml", {});
}

// bench-1b over 2 ranks: 1F1B (2 stages) and DualPipeV (4 stages, rank 0 holding stages 0 and 3
// with the head and the MTP module). Prints the splits.
TEST(StageLayout, Bench1bSplitsAreWithinOneLayerOfTheIdeal) {
  const Config config = bench_1b();
  const ModelConfig& cfg = config.model;
  const int64_t seq = config.train.seq_len;
  const StageCostModel model = stage_cost_model(cfg, seq);
  const double layer = *std::max_element(model.layer.begin(), model.layer.end());
  const double total = std::accumulate(model.layer.begin(), model.layer.end(),
                                       model.first_extra + model.last_extra);
  std::printf("  bench-1b, seq %lld: layer %.3f GFLOP/token, head + MTP %.3f (%.2f layers)\n",
              static_cast<long long>(seq), layer / 1e9, model.last_extra / 1e9,
              model.last_extra / layer);
  for (ScheduleKind kind : {ScheduleKind::OneFOneB, ScheduleKind::DualPipeV}) {
    const int ranks = 2, stages = pipeline::pipeline_stage_count(kind, ranks);
    const StageLayout got = resolve_stage_layout("auto", cfg, kind, stages, seq);
    const StageLayout even = resolve_stage_layout("even", cfg, kind, stages, seq);
    EXPECT_EQ(even, even_stage_layout(cfg.num_hidden_layers, stages));
    const double worst = largest(rank_costs(model, got, kind));
    const double even_worst = largest(rank_costs(model, even, kind));
    EXPECT_LE(worst, total / ranks + layer) << got.text();
    EXPECT_LT(worst, even_worst) << got.text();
    std::printf("  %s\n", describe_stage_layout("auto", got, cfg, kind, seq).c_str());
    std::printf("  %s\n", describe_stage_layout("even", even, cfg, kind, seq).c_str());
  }
}

// DeepSeek-V3 (61 layers, 3 dense) at the pipeline degrees of spec §5: DualPipe over 16 ranks (the
// paper's PP16), DualPipeV over 8 ranks, 1F1B over 16: within one layer of the ideal (printed).
TEST(StageLayout, V3SplitsAreWithinOneLayerOfTheIdeal) {
  const Config config = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/v3-671b.toml", {});
  const ModelConfig& cfg = config.model;
  const int64_t seq = config.train.seq_len;
  const StageCostModel model = stage_cost_model(cfg, seq);
  const double layer = *std::max_element(model.layer.begin(), model.layer.end());
  const double total = std::accumulate(model.layer.begin(), model.layer.end(),
                                       model.first_extra + model.last_extra);
  std::printf("  v3-671b, seq %lld: layer %.3f GFLOP/token, head + MTP %.3f (%.2f layers)\n",
              static_cast<long long>(seq), layer / 1e9, model.last_extra / 1e9,
              model.last_extra / layer);
  for (const auto& [kind, ranks] : std::vector<std::pair<ScheduleKind, int>>{
           {ScheduleKind::DualPipe, 16}, {ScheduleKind::DualPipeV, 8}, {ScheduleKind::OneFOneB, 16}}) {
    const int stages = pipeline::pipeline_stage_count(kind, ranks);
    const StageLayout got = resolve_stage_layout("auto", cfg, kind, stages, seq);
    const std::vector<double> costs = rank_costs(model, got, kind);
    // DualPipe's ranks r and P-1-r hold the same two stages: the work divides over P/2 pairs.
    const double groups = kind == ScheduleKind::DualPipe ? ranks / 2.0 : ranks;
    EXPECT_LE(largest(costs), total / groups + layer) << got.text();
    std::printf("  %s\n", describe_stage_layout("auto", got, cfg, kind, seq).c_str());
  }
}

TEST(StageLayout, ResolveChecksAListAgainstTheStages) {
  const Config config = bench_1b();
  EXPECT_EQ(resolve_stage_layout("3,4,3,2", config.model, ScheduleKind::DualPipeV, 4, 4096).layers,
            (std::vector<int64_t>{3, 4, 3, 2}));
  expect_error_mentions(
      [&] { resolve_stage_layout("3,4,3,2", config.model, ScheduleKind::OneFOneB, 2, 4096); },
      "train.pp_stage_layers");
}

}  // namespace
}  // namespace frugal
