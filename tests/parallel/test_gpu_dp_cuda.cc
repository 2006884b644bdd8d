// GPU data parallelism (label cuda; run with one GPU per rank on one node, e.g.
// `mpirun -np 2 build/test_parallel_gpu_dp_cuda` on a 2-GPU machine; every test is skipped when
// the node has fewer GPUs than ranks). The tiny model (dense + MoE layer with a routing bias that
// moves, MTP), 3 steps, validation at steps 2 and 3, trained by the trainer with
// train.device = "cuda" as this rank of a dp = ranks mesh, one micro-batch of 2 sequences per rank
// (batch = 2 * ranks), against ONE GPU running the same batch as `ranks` micro-batches (gradient
// accumulation) on rank 0:
//   - fp32 recipe: every step's losses, gradient norm and validation loss within 1e-6 relative;
//     the checkpoints' weights, routing biases and moments within 1e-6 relative (L2) as wholes and
//     1e-5 per tensor (the bound of the CPU data-parallel test: AdamW's g / (sqrt(v) + eps) turns a
//     last-bit difference of a near-zero gradient into a larger one in that weight); the step 1
//     expert load (integer counts summed over the ranks) exactly; trainer state and config files
//     byte for byte. Why not bitwise: the single GPU adds micro-batch 1's gradient into micro-batch
//     0's inside the backward kernels (GEMM beta = 1, possibly another algorithm, several
//     contributions to one tensor in their own order), the ranks compute each from zero and NCCL
//     adds them (exact for two terms, any order); so only rounding differs.
//   - bf16 recipe (BF16 weight copies and moments): a master weight nudged by rounding may round
//     to another BF16 copy, so the runs drift further apart: losses, norms within 1e-3 relative,
//     weights 1e-4 whole / 1e-3 per tensor, moments 1e-2 whole / 5e-2 per tensor. A data-parallel
//     step that lost a rank's gradient or the summed load would miss these by orders of magnitude
//     (the gradient norm alone by ~30%, a routing bias by 2 * gamma).
// In both, every rank ends with bitwise the same weights and routing biases (NCCL hands every rank
// the same sum), only dp rank 0 writes the checkpoint, and the log line names the ranks.
// Each runs twice: the all-reduce path (train.gpu_zero1 = false: a whole optimizer on every rank)
// and ZeRO-1 (train.gpu_zero1 = true, the default: parallel/gpu_zero1.h), with the same bounds
// (ZeRO-1's norm is summed from the shards' norms, its AdamW is the same kernel on the same
// summed gradients). ZeRO-1 also checks that a rank holds less than 0.6 of a whole replica's fp32
// moments (2 ranks: about half), and that its checkpoints (moments gathered to dp rank 0) resume
// bit for bit, like the all-reduce path's.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "gpu_parallel_test_util.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

class GpuDataParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    ranks = world->size();
    if (const std::string missing = missing_gpu_per_rank(ranks); !missing.empty())
      GTEST_SKIP() << missing;
  }

  // Trains the data-parallel run (into par/) on every rank, then the single-GPU run (into ref/) on
  // rank 0, and compares them on rank 0.
  // Returns this rank's optimizer state sizes.
  OptimizerStateBytes compare(const std::string& precision, const Tolerances& tol, bool zero1) {
    SharedTempDir dir(*world);
    const std::vector<std::string> extra = {
        "train.device=cuda", "train.precision=" + precision, "train.micro_batch=2",
        "train.batch_sequences=" + std::to_string(2 * ranks),
        std::string("train.gpu_zero1=") + (zero1 ? "true" : "false")};
    const std::string par = dir.path("par"), ref = dir.path("ref");
    const Config config = parallel_test_config(par, extra);
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    OptimizerStateBytes bytes;
    train_on_every_rank(config, mesh, *world,
                        {std::to_string(ranks) + " ranks", "cuda:",
                         zero1 ? "ZeRO-1" : "gradients all-reduced"},
                        "the replicas' weights or routing biases differ after 3 steps", &bytes);
    const std::string label = std::to_string(ranks) + " ranks" + (zero1 ? " ZeRO-1" : "");
    if (world->rank() == 0)
      expect_matches_one_gpu(label, par, parallel_test_config(ref, extra), precision, tol);
    world->barrier();
    std::printf("CHECK rank %d, %s %s: optimizer state %lld bytes here, a whole fp32 replica's "
                "moments %lld bytes (%.3f)\n",
                world->rank(), precision.c_str(), zero1 ? "ZeRO-1" : "all-reduce",
                static_cast<long long>(bytes.held),
                static_cast<long long>(bytes.full_fp32_replica),
                static_cast<double>(bytes.held) / static_cast<double>(bytes.full_fp32_replica));
    return bytes;
  }

  std::unique_ptr<Communicator> world;
  int ranks = 1;
};

TEST_F(GpuDataParallel, Fp32EqualsOneGpuWithGradientAccumulation) {
  const OptimizerStateBytes bytes = compare("fp32", {1e-6, 1e-6, 1e-5, 1e-6, 1e-5}, false);
  // A whole replica (GpuAdamW pads each tensor's slice, so at least the unpadded size).
  EXPECT_GE(bytes.held, bytes.full_fp32_replica);
}

TEST_F(GpuDataParallel, Bf16AgreesWithOneGpuWithinBf16Rounding) {
  compare("bf16", {1e-3, 1e-4, 1e-3, 1e-2, 5e-2}, false);
}

TEST_F(GpuDataParallel, Zero1Fp32EqualsOneGpuWithGradientAccumulation) {
  const OptimizerStateBytes bytes = compare("fp32", {1e-6, 1e-6, 1e-5, 1e-6, 1e-5}, true);
  if (ranks > 1) {
    EXPECT_LT(static_cast<double>(bytes.held), 0.6 * static_cast<double>(bytes.full_fp32_replica))
        << "ZeRO-1 on " << ranks << " ranks should hold about 1/" << ranks
        << " of the optimizer state";
  }
  EXPECT_GT(bytes.held, 0);
}

TEST_F(GpuDataParallel, Zero1Bf16AgreesWithOneGpuWithinBf16Rounding) {
  const OptimizerStateBytes bytes = compare("bf16", {1e-3, 1e-4, 1e-3, 1e-2, 5e-2}, true);
  if (ranks > 1) {  // BF16 moments: a quarter of a whole fp32 replica's on 2 ranks
    EXPECT_LT(static_cast<double>(bytes.held), 0.3 * static_cast<double>(bytes.full_fp32_replica));
  }
}

// The checkpoint a data-parallel GPU run writes resumes (every rank reads it whole; under ZeRO-1
// each rank uploads its shard of the moments) and continues like an uninterrupted run: 3 steps
// straight equal 2 steps, resume, 1 step, bit for bit (the same ranks, the same kernels, the same
// sums).
class GpuDataParallelResume : public GpuDataParallel,
                              public ::testing::WithParamInterface<bool> {};

TEST_P(GpuDataParallelResume, ResumeContinuesBitForBit) {
  const bool zero1 = GetParam();
  std::printf("CHECK resume, %s\n", zero1 ? "ZeRO-1" : "all-reduce");
  SharedTempDir dir(*world);
  const std::vector<std::string> extra = {
      "train.device=cuda", "train.precision=fp32", "train.micro_batch=2",
      "train.batch_sequences=" + std::to_string(2 * ranks), "train.save_every=2",
      std::string("train.gpu_zero1=") + (zero1 ? "true" : "false")};
  const Config straight = parallel_test_config(dir.path("straight"), extra);
  Mesh mesh(*world, mesh_shape(ranks, straight.train, straight.model));
  train_run(straight, &mesh);
  Config first = parallel_test_config(dir.path("resumed"), extra);
  first.train.steps = 2;
  train_run(first, &mesh);
  world->barrier();
  const Config second = parallel_test_config(dir.path("resumed"), extra);
  train_run(second, &mesh, dir.path("resumed") + "/checkpoint-00000002");
  world->barrier();
  if (world->rank() == 0)
    expect_resume_continues(dir.path("straight"), dir.path("resumed"),
                            "resuming did not restore the replicas' weights, moments or step count");
  world->barrier();
}

INSTANTIATE_TEST_SUITE_P(AllReduceAndZero1, GpuDataParallelResume, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Zero1") : std::string("AllReduce");
                         });

}  // namespace
}  // namespace frugal
