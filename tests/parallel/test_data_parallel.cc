// Data parallelism (ZeRO-1) at 2 and 4 ranks against the single-process run of the same config,
// tiny model (dense + MoE layers, MTP), 3 steps:
//   - one micro-batch per rank (train.micro_batch 2, batch = 2 * ranks): BITWISE — the checkpoint
//     files (weights, routing biases, AdamW moments and step, trainer state) are byte for byte the
//     single-process ones, and so are every step's losses, gradient norm and validation loss;
//   - two micro-batches per rank (train.micro_batch 1, batch = 2 * ranks): the rank sums are
//     grouped differently (G0+G2)+(G1+G3), so within 1e-6 relative: each logged loss and norm,
//     and the weights and moments as wholes (relative L2; each tensor within 1e-5, see
//     parallel_test_util.h); the data state stays identical.
// In both, every rank ends with the same parameters and routing biases (the all-gathered ZeRO-1
// shards and the load summed over ranks agree). Also: train.device = "cuda" with pipeline
// parallelism is refused (multi-GPU training runs data and expert parallelism; see
// tests/parallel/test_gpu_dp_cuda.cc and test_gpu_ep_cuda.cc).
#include <gtest/gtest.h>

#include "parallel_test_util.h"
#include "train/cpu_engine.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

std::vector<float> all_values(Trainer& trainer) {
  std::vector<float> out;
  for (auto& p : trainer.model().params().all()) out.insert(out.end(), p->value.begin(), p->value.end());
  return out;
}

class DataParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    ranks = world->size();
  }
  // Trains `extra` as this rank of a dp = ranks mesh (into par/) and, on every rank, as a single
  // process (into ref-<rank>/), and returns the two run directories.
  std::pair<std::string, std::string> run_both(const SharedTempDir& dir,
                                               const std::vector<std::string>& extra,
                                               bool* replicas_agree) {
    const std::string par = dir.path("par"), ref = dir.path("ref-" + std::to_string(world->rank()));
    const Config config = parallel_test_config(par, extra);
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    {
      SyntheticSources data(config);
      Trainer trainer(config, data.train, &data.val, true, &mesh);
      const TrainSummary summary = trainer.run();
      EXPECT_EQ(summary.steps_done, 3);
      EXPECT_EQ(summary.checkpoint.empty(), world->rank() != 0) << "only rank 0 saves";
      *replicas_agree = same_on_every_rank(*world, all_values(trainer));
    }
    train_run(parallel_test_config(ref, extra), nullptr);
    world->barrier();
    return {par, ref};
  }
  std::unique_ptr<Communicator> world;
  int ranks = 1;
};

TEST_F(DataParallel, OneMicroBatchPerRankIsBitwiseTheSingleProcessRun) {
  SharedTempDir dir(*world);
  bool replicas_agree = false;
  auto [par, ref] = run_both(
      dir, {"train.micro_batch=2", "train.batch_sequences=" + std::to_string(2 * ranks)},
      &replicas_agree);
  EXPECT_TRUE(replicas_agree);
  EXPECT_EQ(first_different_file(par + "/checkpoint-00000003", ref + "/checkpoint-00000003",
                                 checkpoint_files()),
            "");
  expect_same_metrics(par, ref, 0.0);
}

TEST_F(DataParallel, TwoMicroBatchesPerRankAgreeWithin1e6Relative) {
  SharedTempDir dir(*world);
  bool replicas_agree = false;
  auto [par, ref] = run_both(
      dir, {"train.micro_batch=1", "train.batch_sequences=" + std::to_string(2 * ranks)},
      &replicas_agree);
  EXPECT_TRUE(replicas_agree);
  const std::string a = par + "/checkpoint-00000003", b = ref + "/checkpoint-00000003";
  expect_close_checkpoint(a, b);
  EXPECT_EQ(first_different_file(a, b, {"trainer_state.json", "config.json"}), "");
  expect_same_metrics(par, ref, 1e-6);
}

// Several GPUs run data and expert parallelism, or a pipeline over pp x dp (x ep): a build without
// CUDA and NCCL refuses train.device = "cuda" with train.pp = 2 on every rank (before any
// collective), naming the settings (a CUDA build would train it: test_gpu_pipeline_cuda.cc). And
// the CPU engine of a mesh has no single-process optimizer to hand out.
TEST_F(DataParallel, CudaPipelineWithoutCudaIsRefusedAndTheOptimizerIsSharded) {
  SharedTempDir dir(*world);
  Config config = parallel_test_config(dir.path("run"), {});
  TextDataSource train(synthetic_tokens(3000, 11), config.train.seed, 0, 1,
                       ByteTokenizer::kVocabSize, "train");
#if !(defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL))
  {
    Config pp_config = parallel_test_config(dir.path("run-pp"), {"train.pp=2"});
    Mesh pp_mesh(*world, mesh_shape(ranks, pp_config.train, pp_config.model));
    pp_config.train.device = "cuda";
    const std::string message =
        error_message([&] { Trainer trainer(pp_config, train, nullptr, true, &pp_mesh); });
    EXPECT_NE(message.find("built without CUDA and NCCL"), std::string::npos) << message;
    EXPECT_NE(message.find("train.pp = 2"), std::string::npos) << message;
    EXPECT_NE(message.find("train.device"), std::string::npos) << message;
  }
#endif
  Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));

  config.train.device = "cpu";
  Trainer trainer(config, train, nullptr, true, &mesh);
  const std::string sharded = error_message([&] { trainer.optimizer(); });
  EXPECT_NE(sharded.find("sharded (ZeRO-1)"), std::string::npos) << sharded;
  const auto* engine = dynamic_cast<const CpuEngine*>(&trainer.engine());
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->zero1(), nullptr);
  EXPECT_LT(engine->zero1()->shard_elements(), engine->zero1()->total_elements());
}

}  // namespace
}  // namespace frugal
