// Pipeline parallelism on the CPU model against the single-process Transformer, tiny config with
// 2 x ranks decoder layers (dense first, then MoE; one MTP module), float, 2 sequences of 6 tokens
// per micro-batch:
//   - stages chained in one process (2, 3 and 4 stages, one ParamStore per stage): every
//     micro-batch's losses and every gradient BITWISE Transformer<float>'s, but the embedding's,
//     split between the first stage and the MTP (last) stage: their sum within 1e-6 relative;
//   - one step of each schedule (1F1B and ZB1P: stages = ranks, 2 x ranks micro-batches; DualPipe:
//     stages = ranks, 2 x ranks micro-batches; DualPipeV: 2 x ranks stages, 2 x ranks
//     micro-batches) under MPI against Transformer<float> accumulating the same micro-batches
//     (forward, backward_input(1/M), backward_weight each): every micro-batch's Losses BITWISE;
//     gradients BITWISE for every tensor that one rank accumulates in micro-batch order (1F1B,
//     ZB1P, DualPipeV: all but the embedding when the MTP module sits on another stage), within
//     1e-6 relative (L2 over the tensor) where the sum is grouped differently: the embedding
//     (first-stage and MTP contributions summed apart), and with DualPipe every tensor (the two
//     parameter copies' sums added);
//   - messages past MPI's eager limit (blocking sends) run without deadlock, same agreement;
//   - three AdamW steps of each schedule, without and with MTP (see adamw_steps);
//   - every tensor held by several ranks stays bitwise the same on all of them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "core/rng.h"
#include "model/tiny_model_config.h"
#include "parallel/mpi_communicator.h"
#include "parallel/pipeline_runner.h"
#include "train/adamw.h"

namespace frugal {
namespace {

using pipeline::ScheduleKind;

constexpr int64_t kSequences = 2, kSeq = 6;

ModelConfig pipeline_config(int64_t layers) {
  ModelConfig cfg = testing::tiny_model_config();
  cfg.num_hidden_layers = layers;
  return cfg;
}

struct Batch {
  std::vector<int32_t> tokens, targets;  // [micro_batches, kSequences, kSeq]
};

Batch random_batch(const ModelConfig& cfg, int micro_batches, uint64_t seed,
                   int64_t sequences = kSequences) {
  Batch b;
  const int64_t n = micro_batches * sequences * kSeq;
  RandomStream rng(seed, 7);
  for (int64_t i = 0; i < n; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.uniform(2 * i) * static_cast<double>(cfg.vocab_size)) %
                       static_cast<int32_t>(cfg.vocab_size));
    // Some ignored targets (< 0), as padding makes.
    const double u = rng.uniform(2 * i + 1);
    b.targets.push_back(u < 0.1 ? -1 : static_cast<int32_t>(u * static_cast<double>(cfg.vocab_size)) %
                                          static_cast<int32_t>(cfg.vocab_size));
  }
  return b;
}

template <class T = float>
std::unique_ptr<Transformer<T>> reference_model(const ModelConfig& cfg) {
  auto model = std::make_unique<Transformer<T>>(cfg);
  model->init_weights(5, 0.3);
  // Non-zero routing biases, so the stages' copies of them matter.
  for (auto& p : model->params().all())
    if (!p->trainable)
      for (size_t i = 0; i < p->value.size(); ++i) p->value[i] = static_cast<T>(0.01 * static_cast<double>(i % 3));
  return model;
}

// Copies every tensor of `store` from the reference by name.
template <class T>
void copy_values(const ParamStore<T>& reference, ParamStore<T>& store) {
  for (auto& p : store.all()) p->value = reference.get(p->name).value;
}

template <class T>
std::vector<Losses> reference_step(Transformer<T>& model, const Batch& batch, int micro_batches,
                                   const LossWeights& weights, int64_t sequences = kSequences) {
  std::vector<Losses> out;
  const int64_t rows = sequences * kSeq;
  for (int m = 0; m < micro_batches; ++m) {
    typename Transformer<T>::Ctx ctx;
    out.push_back(model.forward(ctx, batch.tokens.data() + m * rows, batch.targets.data() + m * rows,
                                sequences, kSeq, weights, true));
    model.backward_input(ctx, 1.0 / micro_batches);
    model.backward_weight(ctx);
  }
  return out;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <class T>
double relative_l2(const std::vector<T>& a, const std::vector<T>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

void expect_same_losses(const std::vector<Losses>& got, const std::vector<Losses>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t m = 0; m < want.size(); ++m) {
    EXPECT_EQ(got[m].total, want[m].total) << "micro-batch " << m;
    EXPECT_EQ(got[m].main, want[m].main) << "micro-batch " << m;
    EXPECT_EQ(got[m].mtp, want[m].mtp) << "micro-batch " << m;
    EXPECT_EQ(got[m].balance, want[m].balance) << "micro-batch " << m;
    EXPECT_EQ(got[m].tokens, want[m].tokens) << "micro-batch " << m;
  }
}

TEST(PipelineStage, ChainedStagesAreBitwiseTheTransformer) {
  for (int stages : {2, 3, 4}) {
    const ModelConfig cfg = pipeline_config(4);
    auto reference = reference_model(cfg);
    std::vector<ParamStore<float>> stores(stages);
    std::vector<std::unique_ptr<PipelineStage<float>>> parts;
    size_t tensors = 0;
    for (int s = 0; s < stages; ++s) {
      parts.push_back(std::make_unique<PipelineStage<float>>(stores[s], cfg, s, stages));
      copy_values(reference->params(), stores[s]);  // throws if a name is not the Transformer's
      tensors += stores[s].size();
    }
    // The stages hold the Transformer's tensors, the embedding twice (first stage and MTP).
    EXPECT_EQ(tensors, reference->params().size() + 1) << stages << " stages";

    const int micro_batches = 3;
    const Batch batch = random_batch(cfg, micro_batches, 21);
    const LossWeights weights;
    const std::vector<Losses> want = reference_step(*reference, batch, micro_batches, weights);
    std::vector<Losses> got;
    const int64_t rows = kSequences * kSeq;
    for (int m = 0; m < micro_batches; ++m) {
      std::vector<PipelineStage<float>::Ctx> ctx(stages);
      std::vector<float> act, next;
      StageLosses all;
      all.layer_balance.assign(cfg.num_hidden_layers + cfg.num_nextn_predict_layers, 0.0);
      for (int s = 0; s < stages; ++s) {
        StageLosses part = parts[s]->forward(ctx[s], act.data(), batch.tokens.data() + m * rows,
                                             batch.targets.data() + m * rows, kSequences, kSeq,
                                             weights, true, next);
        for (size_t i = 0; i < all.layer_balance.size(); ++i) all.layer_balance[i] += part.layer_balance[i];
        if (parts[s]->last()) {
          all.main = part.main;
          all.mtp = part.mtp;
          all.mtp_depths_run = part.mtp_depths_run;
          all.tokens = part.tokens;
        }
        act = std::move(next);
      }
      got.push_back(finish_losses(all, weights, cfg.num_nextn_predict_layers));
      std::vector<float> grad, dinput;
      for (int s = stages; s-- > 0;) {
        parts[s]->backward_input(ctx[s], grad.data(), dinput, 1.0 / micro_batches);
        grad = std::move(dinput);
      }
      for (int s = stages; s-- > 0;) parts[s]->backward_weight(ctx[s]);
    }
    expect_same_losses(got, want);
    for (int s = 0; s < stages; ++s)
      for (auto& p : stores[s].all()) {
        const auto& ref = reference->params().get(p->name);
        if (p->name == "model.embed_tokens.weight") {
          // Split between the first stage (main) and the last (MTP): summed, it is within rounding.
          std::vector<float> sum = stores[0].get(p->name).grad;
          const auto& mtp_part = stores[stages - 1].get(p->name).grad;
          for (size_t i = 0; i < sum.size(); ++i) sum[i] += mtp_part[i];
          EXPECT_LE(relative_l2(sum, ref.grad), 1e-6);
        } else {
          EXPECT_TRUE(bitwise_equal(p->grad, ref.grad)) << p->name << " at " << stages << " stages";
        }
      }
  }
}

TEST(PipelineStage, LayerSplitIsEvenAndRefusesEmptyStages) {
  EXPECT_EQ(layers_of_stage(7, 3, 0), (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(layers_of_stage(7, 3, 1), (std::pair<int64_t, int64_t>{3, 5}));
  EXPECT_EQ(layers_of_stage(7, 3, 2), (std::pair<int64_t, int64_t>{5, 7}));
  EXPECT_THROW(layers_of_stage(2, 3, 0), Error);
}

struct Case {
  ScheduleKind kind;
  int stages, micro_batches;
};

class PipelineRunnerTest : public ::testing::TestWithParam<ScheduleKind> {
 protected:
  void SetUp() override { world = mpi_world_communicator(); }
  Case make_case() const {
    const int p = world->size();
    switch (GetParam()) {
      case ScheduleKind::DualPipeV: return {GetParam(), 2 * p, 2 * p};
      default: return {GetParam(), p, 2 * p};
    }
  }
  std::unique_ptr<Communicator> world;
};

// One step of `sequences` sequences per micro-batch: losses bitwise, gradients bitwise or within
// `relative` (L2 over the tensor) where the sums are grouped differently.
// layout: the stage split (empty: even, over 2 x ranks layers; else over its layers).
void one_step(Communicator& world, const Case& c, int64_t sequences, double relative,
              const StageLayout& layout = {}) {
  const int64_t layers = layout.layers.empty()
                             ? 2 * world.size()
                             : std::accumulate(layout.layers.begin(), layout.layers.end(), int64_t{0});
  const ModelConfig cfg = pipeline_config(layers);
  auto reference = reference_model(cfg);
  PipelineRunner<float> runner(cfg, pipeline::build_schedule(c.kind, c.stages, c.micro_batches),
                               world, {}, layout);
  if (!layout.layers.empty()) {
    EXPECT_EQ(runner.layout(), layout);
  }
  copy_values(reference->params(), runner.params());
  const Batch batch = random_batch(cfg, c.micro_batches, 33, sequences);
  const LossWeights weights;
  const std::vector<Losses> want =
      reference_step(*reference, batch, c.micro_batches, weights, sequences);
  const std::vector<Losses> got =
      runner.step(batch.tokens.data(), batch.targets.data(), sequences, kSeq, weights);
  expect_same_losses(got, want);

  const bool embedding_apart = cfg.num_nextn_predict_layers > 0;
  int bitwise = 0, close = 0;
  double worst = 0;
  for (auto& p : runner.params().all()) {
    if (!p->trainable) continue;
    const auto& ref = reference->params().get(p->name);
    const bool grouped_differently =
        c.kind == ScheduleKind::DualPipe || (embedding_apart && p->name == "model.embed_tokens.weight");
    if (grouped_differently) {
      EXPECT_LE(relative_l2(p->grad, ref.grad), relative) << p->name;
      worst = std::max(worst, relative_l2(p->grad, ref.grad));
      ++close;
    } else {
      EXPECT_TRUE(bitwise_equal(p->grad, ref.grad)) << p->name << " on rank " << world.rank();
      ++bitwise;
    }
  }
  EXPECT_GT(bitwise + close, 0);
  std::printf("  rank %d %s, %lld sequences per micro-batch: %d gradients bitwise, %d within %.3g "
              "relative\n",
              world.rank(), pipeline::schedule_kind_name(c.kind), static_cast<long long>(sequences),
              bitwise, close, worst);
}

TEST_P(PipelineRunnerTest, OneStepMatchesTheSingleProcessGradients) {
  one_step(*world, make_case(), kSequences, 1e-6);
}

// Messages of 1400 * 6 rows * 8 floats = 269 KB, past every MPI eager limit: sends block until
// received, and 1F1B's opposite sends between neighbours must have been fused into exchanges
// (a deadlock ends in the test's timeout). The float sums over 8400 rows per micro-batch round
// more, so the differently grouped gradients get 1e-5 (measured <= 6.4e-6).
TEST_P(PipelineRunnerTest, MessagesPastTheEagerLimitDoNotDeadlock) {
  one_step(*world, make_case(), 1400, 1e-5);
}

// Every tensor held by several ranks (DualPipe's copies, the MTP stage's embedding) is bitwise the
// same on all of them. Collective.
template <class T>
void expect_copies_agree(Communicator& world, const ParamStore<T>& reference, ParamStore<T>& mine) {
  for (auto& ref : reference.all()) {
    const Param<T>* p = mine.find(ref->name);
    std::vector<T> local(ref->value.size() + 1, T(0));
    if (p != nullptr) {
      local[0] = 1;
      std::copy(p->value.begin(), p->value.end(), local.begin() + 1);
    }
    std::vector<T> all(local.size() * world.size());
    world.all_gather(all.data(), local.data(), static_cast<int64_t>(local.size()),
                     sizeof(T) == 8 ? CommType::F64 : CommType::F32);
    const T* first = nullptr;
    for (int r = 0; r < world.size(); ++r) {
      const T* x = all.data() + r * local.size();
      if (x[0] == 0) continue;
      if (first == nullptr)
        first = x;
      else
        EXPECT_EQ(std::memcmp(first, x, local.size() * sizeof(T)), 0) << ref->name << " rank " << r;
    }
    EXPECT_NE(first, nullptr) << ref->name << " is held by no rank";
  }
}

// Three AdamW steps (clipping active) and routing-bias updates, in double: the single-process
// Transformer<double> with AdamW against the runner with PipelineAdamW (weights and routing biases
// compared). Without MTP every gradient of 1F1B, ZB1P and DualPipeV is summed in the
// single-process order, so the losses, the gradient norm, the weights and the biases stay
// BITWISE; with MTP (embedding summed apart) and with DualPipe (copies summed) step 0's losses are
// bitwise (same weights) and everything stays within 1e-9 relative: each micro-batch loss, the
// gradient norm, each tensor (L2). (In float, AdamW's division by sqrt(v) turns last-bit gradient
// differences into visibly larger weight differences after a few steps; double keeps the
// comparison about the pipeline, the float gradients of one step are checked above.)
void adamw_steps(Communicator& world, const Case& c, int64_t mtp_depth,
                 const StageLayout& layout = {}) {
  const int64_t layers = layout.layers.empty()
                             ? 2 * world.size()
                             : std::accumulate(layout.layers.begin(), layout.layers.end(), int64_t{0});
  ModelConfig cfg = pipeline_config(layers);
  cfg.num_nextn_predict_layers = mtp_depth;
  auto reference = reference_model<double>(cfg);
  PipelineRunner<double> runner(cfg, pipeline::build_schedule(c.kind, c.stages, c.micro_batches),
                               world, {}, layout);
  // Each stage holds the layers the layout gives it.
  for (const auto& st : runner.stages())
    EXPECT_EQ(std::make_pair(st->layer_begin(), st->layer_end()), runner.layout().range(st->stage()));
  copy_values(reference->params(), runner.params());
  OptimConfig optim;
  optim.grad_clip = 0.5;
  AdamW<double> reference_adamw(optim, reference->params());
  PipelineAdamW<double> adamw(optim, runner);
  const bool bitwise = mtp_depth == 0 && c.kind != ScheduleKind::DualPipe;
  const LossWeights weights;
  const double lr = 1e-2;
  int clipped = 0;
  double worst_norm = 0, worst_loss = 0;
  for (int step = 0; step < 3; ++step) {
    const Batch batch = random_batch(cfg, c.micro_batches, 100 + step);
    reference->params().zero_grad();
    runner.params().zero_grad();
    const std::vector<Losses> want = reference_step(*reference, batch, c.micro_batches, weights);
    const std::vector<Losses> got =
        runner.step(batch.tokens.data(), batch.targets.data(), kSequences, kSeq, weights);
    const auto want_info = reference_adamw.step(reference->params(), lr);
    const auto got_info = adamw.step(lr);
    clipped += want_info.clip_scale < 1;
    reference->update_balance_bias(1e-2);
    runner.update_balance_bias(1e-2);
    ASSERT_EQ(got.size(), want.size());
    if (bitwise || step == 0) {  // the forward of step 0 sees equal weights in every case
      expect_same_losses(got, want);
    }
    if (bitwise) {
      EXPECT_EQ(got_info.grad_norm, want_info.grad_norm) << "step " << step;
    }
    const double norm_deviation = std::fabs(got_info.grad_norm - want_info.grad_norm) / want_info.grad_norm;
    EXPECT_LE(norm_deviation, 1e-9) << "step " << step;
    worst_norm = std::max(worst_norm, norm_deviation);
    for (size_t m = 0; m < want.size(); ++m) {
      const double loss_deviation = std::fabs(got[m].total - want[m].total) / std::fabs(want[m].total);
      EXPECT_LE(loss_deviation, 1e-9) << "step " << step << " micro-batch " << m;
      worst_loss = std::max(worst_loss, loss_deviation);
    }
  }
  EXPECT_GT(clipped, 0) << "the test should exercise clipping by the global norm";
  double worst = 0, diff = 0, norm = 0;
  for (auto& p : runner.params().all()) {
    const auto& ref = reference->params().get(p->name);
    if (bitwise) {
      EXPECT_TRUE(bitwise_equal(p->value, ref.value)) << p->name << " on rank " << world.rank();
    } else {
      worst = std::max(worst, relative_l2(p->value, ref.value));
      EXPECT_LE(relative_l2(p->value, ref.value), 1e-9) << p->name << " on rank " << world.rank();
      for (size_t i = 0; i < ref.value.size(); ++i) {
        diff += (double(p->value[i]) - ref.value[i]) * (double(p->value[i]) - ref.value[i]);
        norm += double(ref.value[i]) * ref.value[i];
      }
    }
  }
  if (!bitwise) {
    EXPECT_LE(std::sqrt(diff / norm), 1e-9) << "rank " << world.rank();
    std::printf("  rank %d %s, MTP depth %lld, after 3 AdamW steps: weights %.3g (worst tensor %.3g), "
                "loss %.3g, grad norm %.3g relative\n",
                world.rank(), pipeline::schedule_kind_name(c.kind), static_cast<long long>(mtp_depth),
                std::sqrt(diff / norm), worst, worst_loss, worst_norm);
  }
  expect_copies_agree(world, reference->params(), runner.params());
}

TEST_P(PipelineRunnerTest, AdamWStepsWithoutMtpMatchTheSingleProcess) {
  adamw_steps(*world, make_case(), 0);
}

TEST_P(PipelineRunnerTest, AdamWStepsWithMtpMatchTheSingleProcess) {
  adamw_steps(*world, make_case(), 1);
}

// Uneven stage splits (stage_layout.h), including empty first / last stages, for `ranks` ranks:
// the same agreement with the single process as the even split (same tolerances, see above).
struct UnevenCase {
  ScheduleKind kind;
  const char* name;
  std::function<std::vector<int64_t>(int stages)> layers;
};

std::vector<int64_t> repeat(const std::vector<int64_t>& pattern, int stages) {
  std::vector<int64_t> out;
  for (int s = 0; s < stages; ++s) out.push_back(pattern[s % pattern.size()]);
  return out;
}

const UnevenCase kUnevenCases[] = {
    // 1F1B: 1,3 (two ranks), 1,3,1,3 (four).
    {ScheduleKind::OneFOneB, "1f1b_1_3", [](int s) { return repeat({1, 3}, s); }},
    // 1F1B: the last stage holds only the head, MTP and losses: 3,..,3,0.
    {ScheduleKind::OneFOneB, "1f1b_last_empty",
     [](int s) {
       std::vector<int64_t> v = repeat({3}, s);
       v.back() = 0;
       return v;
     }},
    // DualPipeV: 3,1,2,2 (two ranks), 3,1,2,2,3,1,2,2 (four).
    {ScheduleKind::DualPipeV, "dualpipev_3_1_2_2", [](int s) { return repeat({3, 1, 2, 2}, s); }},
    // DualPipeV: the first stage holds only the embedding, 0,2,..,2,3.
    {ScheduleKind::DualPipeV, "dualpipev_first_empty",
     [](int s) {
       std::vector<int64_t> v = repeat({2}, s);
       v.front() = 0;
       v.back() = 3;
       return v;
     }},
    // ZB1P and DualPipe: 2,1,.. and 1,3,.. .
    {ScheduleKind::ZB1P, "zb1p_2_1", [](int s) { return repeat({2, 1}, s); }},
    {ScheduleKind::DualPipe, "dualpipe_1_3", [](int s) { return repeat({1, 3}, s); }},
};

class UnevenSplitTest : public ::testing::TestWithParam<UnevenCase> {
 protected:
  void SetUp() override { world = mpi_world_communicator(); }
  Case make_case() const {
    const int p = world->size();
    const ScheduleKind kind = GetParam().kind;
    return kind == ScheduleKind::DualPipeV ? Case{kind, 2 * p, 2 * p} : Case{kind, p, 2 * p};
  }
  StageLayout layout() const { return StageLayout{GetParam().layers(make_case().stages)}; }
  std::unique_ptr<Communicator> world;
};

TEST_P(UnevenSplitTest, OneStepMatchesTheSingleProcessGradients) {
  if (world->rank() == 0) std::printf("  split %s\n", layout().text().c_str());
  one_step(*world, make_case(), kSequences, 1e-6, layout());
}

TEST_P(UnevenSplitTest, AdamWStepsWithMtpMatchTheSingleProcess) {
  adamw_steps(*world, make_case(), 1, layout());
}

TEST_P(UnevenSplitTest, AdamWStepsWithoutMtpMatchTheSingleProcess) {
  adamw_steps(*world, make_case(), 0, layout());
}

INSTANTIATE_TEST_SUITE_P(Splits, UnevenSplitTest, ::testing::ValuesIn(kUnevenCases),
                         [](const ::testing::TestParamInfo<UnevenCase>& info) {
                           return std::string(info.param.name);
                         });

// A layout that does not fit the schedule's stages is refused when the runner is built.
TEST(PipelineRunner, RefusesALayoutForAnotherStageCount) {
  auto world = mpi_world_communicator();
  const int p = world->size();
  const ModelConfig cfg = pipeline_config(2 * p);
  try {
    PipelineRunner<float> runner(cfg, pipeline::build_schedule(ScheduleKind::OneFOneB, p, 2 * p),
                                 *world, {}, StageLayout{repeat({2}, 2 * p)});
    ADD_FAILURE() << "a layout of " << 2 * p << " stages was accepted for " << p;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("entries, but the pipeline has"), std::string::npos)
        << e.what();
  }
}

TEST(PipelineRunner, RefusesAScheduleForAnotherRankCount) {
  auto world = mpi_world_communicator();
  const ModelConfig cfg = pipeline_config(2 * (world->size() + 1));
  try {
    PipelineRunner<float> runner(
        cfg, pipeline::build_schedule(ScheduleKind::OneFOneB, world->size() + 1, 4), *world);
    ADD_FAILURE() << "a schedule of " << world->size() + 1 << " ranks was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs " + std::to_string(world->size() + 1) + " ranks"),
              std::string::npos)
        << e.what();
  }
}

// A step list that would wait forever (each rank first waits for the other's message) is refused
// when the runner is built, on every rank, naming where the ranks wait.
TEST(PipelineRunner, RefusesStepListsThatWouldDeadlock) {
  auto world = mpi_world_communicator();
  const int p = world->size();
  pipeline::Schedule schedule = pipeline::build_schedule(ScheduleKind::OneFOneB, p, 2);
  // Rank 1 now waits for micro-batch 0's gradient from rank 0 before anything else.
  auto& first_steps = schedule.steps[1];
  first_steps.insert(first_steps.begin(),
                     pipeline::Step{pipeline::Op::RecvBackward, {0, 0, 1}, {}, 0});
  schedule.steps[0].insert(schedule.steps[0].begin(),
                           pipeline::Step{pipeline::Op::RecvBackward, {0, 1, 0}, {}, 1});
  try {
    PipelineRunner<float> runner(pipeline_config(2 * p), schedule, *world);
    ADD_FAILURE() << "a deadlocking step list was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot run with blocking sends"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 0 at recv_bwd (peer 1)"), std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelineRunnerTest,
                         ::testing::Values(ScheduleKind::OneFOneB, ScheduleKind::ZB1P,
                                           ScheduleKind::DualPipe, ScheduleKind::DualPipeV),
                         [](const auto& info) {
                           return std::string(pipeline::schedule_kind_name(info.param));
                         });

}  // namespace
}  // namespace frugal
