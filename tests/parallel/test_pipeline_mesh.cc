// Pipeline parallelism on a combined mesh (train/pipeline_engine.h): pp = 2 stages, dp = world / 2
// data-parallel replicas of the pipeline (ZeRO-1 over each stage's dp group), and expert
// parallelism ep = 2 inside dp or none. Run on 4 ranks (PP2 x DP2, PP2 x DP2 x EP2) and 8 ranks
// (PP2 x DP4, PP2 x DP4 x EP2). Tiny model with 4 decoder layers (dense, then MoE; MTP), 1 sequence
// per micro-batch, 4 micro-batches per dp rank, 3 steps, validation at steps 2 and 3.
//   MatchesTheSingleProcessRun (each schedule x ep): against the single process of the same config,
//     every logged loss, gradient norm and validation loss within 1e-6 relative (the micro-batch
//     gradients are summed in another order: in place per replica, then over dp); the final
//     checkpoint (gathered to world rank 0, the expert shards too) within 1e-6 relative L2 as whole
//     files and 1e-5 per tensor (parallel_test_util.h), trainer_state.json and config.json byte for
//     byte; and the step-2 checkpoint of the mesh run, resumed by a single process (pp = 1), ends
//     at step 3 within the same bounds of the single-process run's checkpoint.
//   ValidationIsTheSingleProcessForward (each schedule x ep): the engine's evaluate (a forward-only
//     pass through the stages, each dp replica its own batch) returns bitwise the main, MTP and
//     total losses of the single-process Transformer's forward of that batch.
//   Refusals: a micro-batch count that does not split over dp, and one that splits into too few
//     per pipeline for DualPipe (accepted by the config check, which knows no dp), by name.
#include <gtest/gtest.h>

#include <tuple>

#include "parallel_test_util.h"
#include "train/pipeline_engine.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

// (schedule, ep)
using Case = std::tuple<std::string, int>;

std::vector<std::string> mesh_overrides(const std::string& schedule, int dp) {
  return {"model.num_hidden_layers=4", "train.micro_batch=1",
          "train.batch_sequences=" + std::to_string(4 * dp), "train.save_every=2",
          "train.pp_schedule=" + schedule};
}

std::vector<std::string> with_mesh(std::vector<std::string> extra, int ep) {
  extra.push_back("train.pp=2");
  extra.push_back("train.ep=" + std::to_string(ep));
  return extra;
}

class PipelineMesh : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    ASSERT_EQ(world->size() % 4, 0) << "this test runs on 4 or 8 ranks";
  }
  std::unique_ptr<Communicator> world;
};

TEST_P(PipelineMesh, MatchesTheSingleProcessRun) {
  const auto& [schedule, ep] = GetParam();
  const int dp = world->size() / 2;
  SharedTempDir dir(*world);
  const std::string par = dir.path("par"), ref = dir.path("ref"), resumed = dir.path("resumed");
  const Config config =
      parallel_test_config(par, with_mesh(mesh_overrides(schedule, dp), ep));
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  ASSERT_EQ(mesh.shape().pp, 2);
  ASSERT_EQ(mesh.shape().dp, dp);
  ASSERT_EQ(mesh.shape().ep, ep);
  const TrainSummary summary = train_run(config, &mesh);
  EXPECT_EQ(summary.steps_done, 3);
  EXPECT_EQ(summary.checkpoint.empty(), world->rank() != 0) << "only world rank 0 saves";
  if (world->rank() == 0) {
    const std::vector<std::string> single = mesh_overrides(schedule, dp);
    train_run(parallel_test_config(ref, single), nullptr);
    const std::string a = par + "/checkpoint-00000003", b = ref + "/checkpoint-00000003";
    expect_close_checkpoint(a, b);
    EXPECT_EQ(first_different_file(a, b, {"trainer_state.json", "config.json"}), "");
    expect_same_metrics(par, ref, 1e-6);
    const auto metrics = read_metrics(par);
    ASSERT_EQ(metrics.size(), 3u);
    EXPECT_TRUE(metrics[1].contains("val_loss") && metrics[2].contains("val_loss"));
    // The mesh's step-2 checkpoint, resumed by one process, reaches the single process's step 3.
    const TrainSummary rest =
        train_run(parallel_test_config(resumed, single), nullptr, par + "/checkpoint-00000002");
    EXPECT_EQ(rest.steps_done, 1);
    const std::string c = resumed + "/checkpoint-00000003";
    expect_close_checkpoint(c, b);
    EXPECT_EQ(first_different_file(c, b, {"trainer_state.json", "config.json"}), "");
  }
  world->barrier();
}

TEST_P(PipelineMesh, ValidationIsTheSingleProcessForward) {
  const auto& [schedule, ep] = GetParam();
  const int dp = world->size() / 2;
  SharedTempDir dir(*world);
  const Config config =
      parallel_test_config(dir.path("eval"), with_mesh(mesh_overrides(schedule, dp), ep));
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  std::unique_ptr<StepEngine> engine = make_step_engine(config, &mesh);
  ASSERT_NE(dynamic_cast<PipelineEngine*>(engine.get()), nullptr);
  // Each dp replica evaluates its own batch of 2 sequences.
  const int64_t batch = 2, seq = config.train.seq_len;
  const std::vector<int32_t> corpus = synthetic_tokens(4000, 21);
  const int64_t at = mesh.coords().dp_rank * (batch * seq + 1) * 3;
  std::vector<int32_t> tokens(corpus.begin() + at, corpus.begin() + at + batch * seq);
  std::vector<int32_t> targets(corpus.begin() + at + 1, corpus.begin() + at + 1 + batch * seq);
  const Losses got = engine->evaluate(tokens.data(), targets.data(), batch, seq);

  Transformer<float> model(config.model);
  model.init_weights(config.train.seed, config.train.init_std);
  Transformer<float>::Ctx ctx;
  const Losses want =
      model.forward(ctx, tokens.data(), targets.data(), batch, seq, {0.0, 0.0}, false);
  EXPECT_EQ(got.main, want.main);
  EXPECT_EQ(got.mtp, want.mtp);
  EXPECT_EQ(got.total, want.total);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_GT(want.main, 0.0);
  world->barrier();
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::get<0>(info.param) + "_ep" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelineMesh,
                         ::testing::Combine(::testing::Values("1f1b", "zb1p", "dualpipe",
                                                              "dualpipev"),
                                            ::testing::Values(1, 2)),
                         case_name);

TEST(PipelineMeshConfig, RefusesMicroBatchesThatDoNotSplitOverDp) {
  auto world = mpi_world_communicator();
  SharedTempDir dir(*world);
  const int dp = world->size() / 2;
  std::vector<std::string> extra = with_mesh(mesh_overrides("1f1b", dp), 1);
  extra.push_back("train.batch_sequences=" + std::to_string(4 * dp + 1));
  const Config config = parallel_test_config(dir.path("x"), extra);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  const std::string message = error_message([&] { make_step_engine(config, &mesh); });
  EXPECT_NE(message.find("train.batch_sequences"), std::string::npos) << message;
  // DualPipe needs an even count >= 2 * pp per pipeline: 2 * dp micro-batches give 2 each.
  std::vector<std::string> few = with_mesh(mesh_overrides("dualpipe", dp), 1);
  few.push_back("train.batch_sequences=" + std::to_string(2 * dp));
  const Config dualpipe = parallel_test_config(dir.path("y"), few);
  const std::string refused = error_message([&] { make_step_engine(dualpipe, &mesh); });
  EXPECT_NE(refused.find("train.pp_schedule = \"dualpipe\""), std::string::npos) << refused;
  EXPECT_NE(refused.find("2 per pipeline"), std::string::npos) << refused;
  world->barrier();
}

}  // namespace
}  // namespace frugal
