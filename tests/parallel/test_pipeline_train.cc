// Pipeline parallelism through the trainer (train/pipeline_engine.h), 2 ranks = 2 pipeline ranks,
// against the single-process run of the same config: tiny model with 4 decoder layers (dense,
// then MoE; MTP), 4 micro-batches of 1 sequence per step, 3 steps, no validation. For each schedule
// (1F1B, ZB1P, DualPipe, DualPipeV):
//   - every logged loss and gradient norm of metrics.jsonl within 1e-6 relative of the single
//     process's (the pipeline accumulates the micro-batch gradients in place, the CPU engine sums
//     separately computed ones, so the float summation order differs), written by rank 0 only;
//   - the final checkpoint (gathered to rank 0): model.safetensors and optimizer.safetensors within
//     1e-6 relative L2 as wholes and 1e-5 per tensor (parallel_test_util.h), trainer_state.json
//     and config.json byte for byte.
// The runs above use the default stage split (train.pp_stage_layers = "auto"); explicit splits
// (1F1B 3,1; DualPipeV 2,1,1,0 with an empty last stage; "even") agree the same way, and a
// checkpoint written under the even split resumes under 2,1,1,0 (step 3 byte for byte).
// Also: a resumed pipeline run writes the uninterrupted run's checkpoint byte for byte; an unknown
// or impossible schedule is refused by config validation naming train.pp_schedule. (Validation and
// pipelines with data and expert parallelism: test_pipeline_mesh.cc.)
#include <gtest/gtest.h>

#include <filesystem>
#include <utility>

#include "parallel_test_util.h"
#include "train/pipeline_engine.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

std::vector<std::string> pipeline_overrides(const std::string& schedule) {
  return {"model.num_hidden_layers=4", "train.micro_batch=1", "train.batch_sequences=4",
          "train.eval_every=0", "train.pp_schedule=" + schedule};
}

class PipelineTrain : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { world = mpi_world_communicator(); }
  std::unique_ptr<Communicator> world;
};

TEST_P(PipelineTrain, MatchesTheSingleProcessRun) {
  ASSERT_EQ(world->size(), 2) << "this test runs on 2 ranks";
  SharedTempDir dir(*world);
  const std::string par = dir.path("par"), ref = dir.path("ref");
  std::vector<std::string> extra = pipeline_overrides(GetParam());
  extra.push_back("train.pp=2");
  const Config config = parallel_test_config(par, extra);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  const TrainSummary summary = train_run(config, &mesh);
  EXPECT_EQ(summary.steps_done, 3);
  EXPECT_EQ(summary.checkpoint.empty(), world->rank() != 0) << "only rank 0 saves";
  if (world->rank() == 0) {
    train_run(parallel_test_config(ref, pipeline_overrides(GetParam())), nullptr);
    const std::string a = par + "/checkpoint-00000003", b = ref + "/checkpoint-00000003";
    expect_close_checkpoint(a, b);
    EXPECT_EQ(first_different_file(a, b, {"trainer_state.json", "config.json"}), "");
    expect_same_metrics(par, ref, 1e-6);
    EXPECT_EQ(read_metrics(par).size(), 3u);
  }
  world->barrier();
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelineTrain,
                         ::testing::Values("1f1b", "zb1p", "dualpipe", "dualpipev"));

// Explicit stage splits (train.pp_stage_layers; the runs above use the default "auto"), including
// an empty last stage: the same agreement with the single process.
TEST(PipelineTrainSplit, ExplicitSplitsMatchTheSingleProcessRun) {
  auto world = mpi_world_communicator();
  ASSERT_EQ(world->size(), 2) << "this test runs on 2 ranks";
  for (const auto& [schedule, split] : std::vector<std::pair<std::string, std::string>>{
           {"1f1b", "3,1"}, {"dualpipev", "2,1,1,0"}, {"dualpipev", "even"}}) {
    SCOPED_TRACE(schedule + " " + split);
    SharedTempDir dir(*world);
    const std::string par = dir.path("par"), ref = dir.path("ref");
    std::vector<std::string> extra = pipeline_overrides(schedule);
    extra.push_back("train.pp=2");
    extra.push_back("train.pp_stage_layers=" + split);
    const Config config = parallel_test_config(par, extra);
    Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
    EXPECT_EQ(train_run(config, &mesh).steps_done, 3);
    if (world->rank() == 0) {
      train_run(parallel_test_config(ref, pipeline_overrides(schedule)), nullptr);
      const std::string a = par + "/checkpoint-00000003", b = ref + "/checkpoint-00000003";
      expect_close_checkpoint(a, b);
      EXPECT_EQ(first_different_file(a, b, {"trainer_state.json", "config.json"}), "");
      expect_same_metrics(par, ref, 1e-6);
    }
    world->barrier();
  }
}

// Checkpoints hold the single-process tensors whatever the split: a run resumed under another split
// (its step-2 checkpoint written with the even split, resumed with 2,1,1,0) writes byte for byte
// the step-3 checkpoint of the uninterrupted run.
TEST(PipelineTrainSplit, ResumesUnderAnotherSplit) {
  auto world = mpi_world_communicator();
  SharedTempDir dir(*world);
  std::vector<std::string> extra = pipeline_overrides("dualpipev");
  extra.push_back("train.pp=2");
  extra.push_back("train.save_every=2");
  std::vector<std::string> even = extra, uneven = extra;
  even.push_back("train.pp_stage_layers=even");
  uneven.push_back("train.pp_stage_layers=2,1,1,0");
  const Config config = parallel_test_config(dir.path("full"), even);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  train_run(config, &mesh);
  world->barrier();
  const Config resumed = parallel_test_config(dir.path("resumed"), uneven);
  const TrainSummary summary =
      train_run(resumed, &mesh, dir.path("full") + "/checkpoint-00000002");
  EXPECT_EQ(summary.steps_done, 1);
  if (world->rank() == 0) {
    const std::string a = dir.path("full") + "/checkpoint-00000003",
                      b = dir.path("resumed") + "/checkpoint-00000003";
    // DualPipeV sums every gradient on one rank in micro-batch order whatever the split (the
    // embedding's two parts both on rank 0), so the files are even byte for byte.
    EXPECT_EQ(first_different_file(a, b, checkpoint_files()), "");
  }
  world->barrier();
}

// A pipeline run resumed from its step-2 checkpoint writes, at step 3, byte for byte the files of
// the uninterrupted run (the gathered state reloads exactly into the stages).
TEST(PipelineTrainResume, ResumedRunWritesTheSameCheckpoint) {
  auto world = mpi_world_communicator();
  SharedTempDir dir(*world);
  std::vector<std::string> extra = pipeline_overrides("dualpipev");
  extra.push_back("train.pp=2");
  extra.push_back("train.save_every=2");
  const Config config = parallel_test_config(dir.path("full"), extra);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  train_run(config, &mesh);
  world->barrier();
  const Config resumed = parallel_test_config(dir.path("resumed"), extra);
  const TrainSummary summary =
      train_run(resumed, &mesh, dir.path("full") + "/checkpoint-00000002");
  EXPECT_EQ(summary.steps_done, 1);
  if (world->rank() == 0) {
    EXPECT_EQ(first_different_file(dir.path("full") + "/checkpoint-00000003",
                                   dir.path("resumed") + "/checkpoint-00000003",
                                   checkpoint_files()),
              "");
  }
  world->barrier();
}

TEST(PipelineTrainConfig, RefusesBadSchedules) {
  auto world = mpi_world_communicator();
  SharedTempDir dir(*world);
  const std::string message = error_message([&] {
    parallel_test_config(dir.path("x"), {"train.pp_schedule=gpipe", "train.pp=2"});
  });
  EXPECT_NE(message.find("train.pp_schedule"), std::string::npos) << message;
  // DualPipe needs an even micro-batch count >= 2 * pp: 3 is refused when the config is read.
  const std::string dualpipe = error_message([&] {
    parallel_test_config(dir.path("x"), {"model.num_hidden_layers=4", "train.micro_batch=1",
                                         "train.batch_sequences=3", "train.pp=2",
                                         "train.pp_schedule=dualpipe", "train.eval_every=0"});
  });
  EXPECT_NE(dualpipe.find("train.pp_schedule = \"dualpipe\""), std::string::npos) << dualpipe;
  world->barrier();
}

}  // namespace
}  // namespace frugal
