// Overlap of the expert-parallel exchanges with computation (parallel/gpu_expert_dispatch.h,
// model/gpu/gpu_moe.h; label cuda; `mpirun -np 2 build/test_parallel_gpu_ep_overlap_cuda` on a
// 2-GPU machine, skipped when the node has fewer GPUs than ranks or the rank count is odd).
// The tiny model (an MoE layer of 8 routed experts and a shared expert) trains 2 steps with
// train.ep = 2 twice: with the exchanges on the side stream beside the shared experts and the
// router's backward (overlap on), and all on the compute stream (overlap off, today's serial
// order). Same kernels, same accumulation order: every logged loss and gradient norm, every
// rank's whole host model and (rank 0) the checkpoint files must be bitwise equal, under fp32 and
// bf16 (whose gate backward runs beside the dispatch's exchange). Both runs measure
// (FRUGAL_OVERLAP_STATS): the all-to-all time must be positive and its hidden fraction in [0, 1],
// for every exchange; with overlap off the all-to-all waits for the compute stream, so next to
// nothing can be hidden (at most 5%, event timestamps being ~0.5 us apart at best).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <optional>

#include "gpu_parallel_test_util.h"
#include "parallel/gpu_expert_dispatch.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

class GpuExpertParallelOverlap : public GpuRanksTest<2> {
 protected:
  void TearDown() override {
    gpu::set_ep_overlap(std::nullopt);
    gpu::set_ep_overlap_stats(std::nullopt);
  }

  struct Run {
    std::vector<float> values;  // this rank's whole host model after the run
    ExchangeOverlap stats;      // this rank's measurement over the run
  };

  // Trains 2 steps (EP 2) into `out` with overlap on or off, measuring.
  Run train(const std::string& out, const std::string& precision, bool overlap) {
    gpu::set_ep_overlap(overlap);
    gpu::set_ep_overlap_stats(true);
    gpu::take_ep_overlap_stats();  // nothing left from an earlier run
    gpu::reset_ep_overlap_stats_total();
    const Config config = parallel_test_config(
        out, {"train.device=cuda", "train.precision=" + precision, "train.micro_batch=2",
              "train.batch_sequences=" + std::to_string(2 * ranks), "train.ep=2",
              "train.steps=2"});
    EXPECT_GT(config.model.n_shared_experts, 0) << "the overlap hides the exchange under these";
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    Run run;
    {
      SyntheticSources data(config);
      Trainer trainer(config, data.train, &data.val, /*quiet=*/true, &mesh);
      const TrainSummary summary = trainer.run();
      EXPECT_EQ(summary.steps_done, 2);
      EXPECT_EQ(summary.skipped_steps, 0);
      run.values = all_values(trainer);  // collective over the EP group
      gpu::take_ep_overlap_stats();      // anything the engine did not take yet
      run.stats = gpu::ep_overlap_stats_total();
    }
    gpu::set_ep_overlap(std::nullopt);
    gpu::set_ep_overlap_stats(std::nullopt);
    return run;
  }

  static void expect_sane(const ExchangeOverlap& stats, const std::string& label) {
    const std::pair<const char*, OverlapTotals> parts[] = {{"dispatch", stats.dispatch},
                                                           {"combine", stats.combine},
                                                           {"counts", stats.counts},
                                                           {"total", stats.total()}};
    for (const auto& [name, t] : parts) {
      EXPECT_GT(t.comm_ms, 0.0) << label << ": no all-to-all time measured for " << name
                                << " (op timing on the NCCL stream not recorded?)";
      EXPECT_GE(t.hidden_ms, 0.0) << label << " " << name;
      EXPECT_LE(t.hidden_ms, t.comm_ms * (1 + 1e-9)) << label << " " << name;
      EXPECT_GE(t.hidden_fraction(), 0.0) << label << " " << name;
      EXPECT_LE(t.hidden_fraction(), 1.0 + 1e-9) << label << " " << name;
    }
    EXPECT_EQ(stats.counts.hidden_ms, 0.0)
        << label << ": the plan's count exchange has nothing beside it, yet "
        << stats.counts.hidden_ms << " ms of it lie under compute intervals";
  }

  void compare(const std::string& precision) {
    SharedTempDir dir(*world);
    const std::string on_dir = dir.path("on"), off_dir = dir.path("off");
    const Run on = train(on_dir, precision, true);
    const Run off = train(off_dir, precision, false);
    if (world->rank() == 0) {
      std::printf("%s, overlap on:  %s\n", precision.c_str(), describe_overlap(on.stats, 2).c_str());
      std::printf("%s, overlap off: %s\n", precision.c_str(),
                  describe_overlap(off.stats, 2).c_str());
    }
    ASSERT_EQ(on.values.size(), off.values.size());
    size_t first_difference = on.values.size();
    for (size_t i = 0; i < on.values.size() && first_difference == on.values.size(); ++i)
      if (std::memcmp(&on.values[i], &off.values[i], sizeof(float)) != 0) first_difference = i;
    EXPECT_EQ(first_difference, on.values.size())
        << "rank " << world->rank() << ": the whole host model after 2 steps differs with overlap "
        << "on and off, first at value " << first_difference
        << " (an accumulation order changed, or a buffer was reused while the side stream ran)";
    expect_sane(on.stats, precision + " overlap on");
    expect_sane(off.stats, precision + " overlap off");
    EXPECT_LE(off.stats.total().hidden_fraction(), 0.05)
        << "with overlap off the all-to-all waits for the compute stream, yet "
        << off.stats.total().hidden_ms << " of " << off.stats.total().comm_ms
        << " ms lie under compute intervals: the intervals are wrong";
    if (world->rank() == 0) {
      expect_same_metrics(on_dir, off_dir, 0.0);  // losses and gradient norms, bitwise
      EXPECT_EQ(first_different_file(on_dir + "/checkpoint-00000002",
                                     off_dir + "/checkpoint-00000002",
                                     {"model.safetensors", "optimizer.safetensors"}),
                "");
    }
    world->barrier();
  }

};

TEST_F(GpuExpertParallelOverlap, Fp32OverlapOnAndOffAreBitwiseEqual) {
  compare("fp32");
}

TEST_F(GpuExpertParallelOverlap, Bf16OverlapOnAndOffAreBitwiseEqual) {
  compare("bf16");
}

}  // namespace
}  // namespace frugal
