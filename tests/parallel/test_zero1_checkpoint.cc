// ZeRO-1 checkpoints are mesh-independent (run at 4 ranks, split into smaller jobs):
//   1. ranks 0-1 train 3 steps as DP 2 x EP 2 while rank 2 trains the same config alone: the
//      checkpoints are byte for byte the same files (weights, biases, moments, step count, state);
//   2. the 2-rank checkpoint resumes on 1 rank (a one-rank mesh: ZeRO-1 with a single shard) and,
//      at the same time, the single-process checkpoint resumes as a single process, both for 3
//      more steps with another micro-batch size (4 micro-batches per step);
//   3. the 2-rank checkpoint resumes on all 4 ranks as DP 4 x EP 4 (other expert shards than the
//      writer's).
// The step-6 checkpoints and the step 4-6 metrics of 2 and 3 are bitwise those of the
// single-process continuation (one micro-batch per rank in 3; the same sums in 2).
// Also: the optimizer file of a different model is refused with the file named.
#include <gtest/gtest.h>

#include "parallel_test_util.h"
#include "train/zero1.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

const std::vector<std::string> kFirst = {"train.micro_batch=2", "train.batch_sequences=4"};
const std::vector<std::string> kSecond = {"train.micro_batch=1", "train.batch_sequences=4",
                                          "train.steps=6"};

Config with_ep(Config config, int ep) {
  config.train.ep = ep;
  return config;
}

TEST(Zero1Checkpoint, TwoRankCheckpointIsTheSingleProcessFileAndResumesOnOneAndFourRanks) {
  auto world = mpi_world_communicator();
  if (world->size() != 4) GTEST_SKIP() << "runs at 4 ranks";
  const int rank = world->rank();
  SharedTempDir dir(*world);
  const std::string a = dir.path("a-dp2-ep2"), b = dir.path("b-single"), c = dir.path("c-resume-np1"),
                    d = dir.path("d-resume-single"), e = dir.path("e-resume-np4");
  const std::string step3 = "/checkpoint-00000003", step6 = "/checkpoint-00000006";

  auto pair = world->split(rank < 2 ? 0 : 1, rank);
  if (rank < 2) {
    const Config config = with_ep(parallel_test_config(a, kFirst), 2);
    Mesh mesh(*pair, mesh_shape(2, config.train, config.model));
    EXPECT_EQ(train_run(config, &mesh).steps_done, 3);
  } else if (rank == 2) {
    EXPECT_EQ(train_run(parallel_test_config(b, kFirst), nullptr).steps_done, 3);
  }
  world->barrier();
  if (rank == 0) {
    EXPECT_EQ(first_different_file(a + step3, b + step3, checkpoint_files()), "");
  }

  auto solo = world->split(rank, 0);
  if (rank == 0) {
    const Config config = parallel_test_config(c, kSecond);
    Mesh mesh(*solo, mesh_shape(1, config.train, config.model));
    EXPECT_EQ(train_run(config, &mesh, a + step3).steps_done, 3);
  } else if (rank == 1) {
    EXPECT_EQ(train_run(parallel_test_config(d, kSecond), nullptr, b + step3).steps_done, 3);
  }
  world->barrier();

  {
    const Config config = with_ep(parallel_test_config(e, kSecond), 4);
    Mesh mesh(*world, mesh_shape(4, config.train, config.model));
    EXPECT_EQ(train_run(config, &mesh, a + step3).steps_done, 3);
  }
  world->barrier();
  if (rank == 0) {
    EXPECT_EQ(first_different_file(c + step6, d + step6, checkpoint_files()), "");
    EXPECT_EQ(first_different_file(e + step6, d + step6, checkpoint_files()), "");
    expect_same_metrics(c, d, 0.0);
    expect_same_metrics(e, d, 0.0);
    EXPECT_EQ(read_metrics(e).front()["step"], 4);
  }
}

TEST(Zero1Checkpoint, RefusesTheOptimizerFileOfAnotherModel) {
  auto world = mpi_world_communicator();
  SharedTempDir dir(*world);
  const std::string small = dir.path("small"), other = dir.path("other");
  const std::vector<std::string> batch = {"train.micro_batch=1",
                                          "train.batch_sequences=" + std::to_string(world->size()),
                                          "train.steps=1", "train.eval_every=0"};
  Config config = parallel_test_config(small, batch);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  train_run(config, &mesh);
  // A model with one more layer: its ZeRO-1 state cannot come from that file.
  ModelConfig bigger = config.model;
  bigger.num_hidden_layers += 1;
  Transformer<float> model(bigger);
  Zero1Optimizer zero1(config.optim, model, mesh);
  const std::string message = error_message([&] { zero1.load(small + "/checkpoint-00000001"); });
  EXPECT_NE(message.find("optimizer.safetensors: holds"), std::string::npos) << message;
  world->barrier();
}

}  // namespace
}  // namespace frugal
