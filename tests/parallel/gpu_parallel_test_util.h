// Shared by the multi-GPU training tests (test_gpu_dp_cuda.cc, test_gpu_ep_cuda.cc): the whole host
// model as one vector, the tolerances of a run-against-one-GPU comparison, and the check that each
// rank has a GPU of its own.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "parallel_test_util.h"
#include "train/gpu_engine.h"

namespace frugal::testing {

inline std::vector<float> all_values(Trainer& trainer) {
  std::vector<float> out;
  for (auto& p : trainer.model().params().all())
    out.insert(out.end(), p->value.begin(), p->value.end());
  return out;
}

struct Tolerances {
  double metrics;                        // relative, every logged loss / norm / validation loss
  double model_whole, model_tensor;      // relative L2 of model.safetensors
  double moments_whole, moments_tensor;  // relative L2 of optimizer.safetensors
};

// "" when every rank can have its own GPU, else why not (for GTEST_SKIP).
inline std::string missing_gpu_per_rank(int ranks) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < ranks)
    return "needs one GPU per rank (" + std::to_string(devices) + " GPUs, " +
           std::to_string(ranks) + " ranks)";
  return "";
}

// A test over the MPI world with one GPU per rank: skips, saying why, when the GPUs are missing or
// the rank count is not a multiple of `rank_multiple` (e.g. 2 for train.ep = 2).
template <int rank_multiple = 1>
class GpuRanksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    ranks = world->size();
    if (const std::string missing = missing_gpu_per_rank(ranks); !missing.empty())
      GTEST_SKIP() << missing;
    if (ranks % rank_multiple != 0)
      GTEST_SKIP() << "needs a multiple of " << rank_multiple << " ranks, not " << ranks;
  }

  std::unique_ptr<Communicator> world;
  int ranks = 1;
};

// Device bytes of a GPU optimizer's moments: this rank's (gpu_optimizer_state_bytes) and those of
// a whole fp32 replica (m and v of every trainable element of the model, no padding).
struct OptimizerStateBytes {
  int64_t held = 0;
  int64_t full_fp32_replica = 0;
};

// Trains `config` (3 steps) on every rank of `mesh` and checks the run: the engine's description
// holds every one of `description_parts`, no step is skipped, only dp rank 0 saves, and every rank
// ends with the same whole host model (`diverged` says what it means if not). `state_bytes`, when
// given, receives the optimizer state sizes of this rank.
inline void train_on_every_rank(const Config& config, const Mesh& mesh, Communicator& world,
                                const std::vector<std::string>& description_parts,
                                const std::string& diverged,
                                OptimizerStateBytes* state_bytes = nullptr) {
  SyntheticSources data(config);
  Trainer trainer(config, data.train, &data.val, true, &mesh);
  if (state_bytes != nullptr) {
    state_bytes->held = gpu_optimizer_state_bytes(trainer.engine());
    state_bytes->full_fp32_replica = 0;
    for (const auto& p : trainer.model().params().all())
      if (p->trainable) state_bytes->full_fp32_replica += 2 * p->numel() * int64_t{4};
  }
  const std::string description = trainer.engine().description();
  for (const std::string& part : description_parts)
    EXPECT_NE(description.find(part), std::string::npos)
        << "the engine's description should hold \"" << part << "\": " << description;
  const TrainSummary summary = trainer.run();
  EXPECT_EQ(summary.steps_done, 3);
  EXPECT_EQ(summary.skipped_steps, 0);
  EXPECT_EQ(summary.checkpoint.empty(), world.rank() != 0) << "only dp rank 0 saves";
  EXPECT_TRUE(same_on_every_rank(world, all_values(trainer))) << diverged;
}

// On rank 0 after a multi-GPU run into `par`: trains `ref_config` on one GPU (into its out_dir)
// and checks the run against it: the logged metrics within tol.metrics, the step-1 expert load
// exactly under fp32, model and optimizer files within the tolerances (relative L2, whole and
// worst tensor), trainer_state.json and config.json byte for byte. Prints both runs' steps and the
// deviations. `label` names the run in the output, `worst_hint` explains a bad worst tensor.
inline void expect_matches_one_gpu(const std::string& label, const std::string& par,
                                   const Config& ref_config, const std::string& precision,
                                   const Tolerances& tol, const std::string& worst_hint = "") {
  const std::string ref = ref_config.train.out_dir;
  const TrainSummary summary = train_run(ref_config, nullptr);
  EXPECT_EQ(summary.steps_done, 3);
  const auto a = read_metrics(par), b = read_metrics(ref);
  ASSERT_FALSE(b.empty());
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    std::printf("  %s step %zu: loss %.9g (%s) vs %.9g (one GPU), grad_norm %.9g vs %.9g\n",
                precision.c_str(), i + 1, a[i]["loss"].get<double>(), label.c_str(),
                b[i]["loss"].get<double>(), a[i]["grad_norm"].get<double>(),
                b[i]["grad_norm"].get<double>());
  expect_same_metrics(par, ref, tol.metrics);
  if (precision == "fp32") {
    EXPECT_EQ(a[0]["expert_load_max_over_mean"], b[0]["expert_load_max_over_mean"])
        << "the expert load of step 1 was not summed over the ranks";
  }
  const std::string pa = par + "/checkpoint-00000003", pb = ref + "/checkpoint-00000003";
  const Deviation model = relative_deviation(pa + "/model.safetensors", pb + "/model.safetensors");
  const Deviation moments =
      relative_deviation(pa + "/optimizer.safetensors", pb + "/optimizer.safetensors");
  std::printf("%s, %s vs one GPU: model %.3g whole, %.3g worst (%s); moments %.3g whole, %.3g "
              "worst (%s)\n",
              precision.c_str(), label.c_str(), model.whole, model.worst_tensor,
              model.worst_name.c_str(), moments.whole, moments.worst_tensor,
              moments.worst_name.c_str());
  EXPECT_LE(model.whole, tol.model_whole);
  EXPECT_LE(model.worst_tensor, tol.model_tensor) << model.worst_name << worst_hint;
  EXPECT_LE(moments.whole, tol.moments_whole);
  EXPECT_LE(moments.worst_tensor, tol.moments_tensor) << moments.worst_name;
  EXPECT_EQ(first_different_file(pa, pb, {"trainer_state.json", "config.json"}), "");
}

// On rank 0 after a run of 3 steps into `straight` and one of 2 steps, resumed for the third, into
// `resumed` (both saving at step 2): the step-3 checkpoints and the metrics must be bit for bit
// the same. Also checks the step-2 checkpoints, which tells a run that does not repeat itself
// (they differ) from a resume that does not restore the state (they agree, step 3 does not), and
// prints the worst tensor of each difference.
inline void expect_resume_continues(const std::string& straight, const std::string& resumed,
                                    const std::string& hint) {
  const std::vector<std::string> files = {"model.safetensors", "optimizer.safetensors",
                                          "trainer_state.json"};
  for (const char* step : {"/checkpoint-00000002", "/checkpoint-00000003"}) {
    const std::string a = straight + step, b = resumed + step;
    const std::string differ = first_different_file(a, b, files);
    EXPECT_EQ(differ, "") << step << ": "
                          << (std::string(step).ends_with("2")
                                  ? "the two runs already differ before the resume: steps 1-2 "
                                    "do not repeat themselves run to run"
                                  : hint);
    if (differ.empty()) continue;
    const Deviation model = relative_deviation(a + "/model.safetensors", b + "/model.safetensors");
    const Deviation moments =
        relative_deviation(a + "/optimizer.safetensors", b + "/optimizer.safetensors");
    std::printf("%s: straight vs resumed: model %.3g whole, %.3g worst (%s); moments %.3g whole, "
                "%.3g worst (%s)\n",
                step + 1, model.whole, model.worst_tensor, model.worst_name.c_str(),
                moments.whole, moments.worst_tensor, moments.worst_name.c_str());
  }
  expect_same_metrics(resumed, straight, 0.0);
}

}  // namespace frugal::testing
