// GPU expert parallelism (label cuda; one GPU per rank on one node, e.g.
// `mpirun -np 2 build/test_parallel_gpu_ep_cuda` on a 2-GPU machine; skipped when the node has
// fewer GPUs than ranks or the rank count is odd). The tiny model (a dense layer, an MoE layer of 8
// routed experts with a moving routing bias, MTP), 3 steps, validation at step 2, trained by the
// trainer with train.device = "cuda", train.ep = 2 inside dp = ranks (2 ranks: each holds 4 of the
// 8 experts of every MoE layer, tokens go to their experts' owners through NCCL all-to-all), one
// micro-batch of 2 sequences per rank, against ONE GPU running the same global batch as `ranks`
// micro-batches on rank 0:
//   - fp32 recipe (fp32 dispatch payload): every step's losses, gradient norm and validation loss
//     within 1e-6 relative; checkpoint weights, routing biases and moments within 1e-6 relative
//     (L2) as wholes and 1e-5 per tensor (AdamW's g / (sqrt(v) + eps) turns a last-bit difference
//     of a near-zero gradient into a larger one in that weight); the step 1 expert load exactly
//     (integer counts summed over the ranks). Why not bitwise: the single GPU accumulates
//     micro-batch 1's gradients onto micro-batch 0's inside its GEMMs while the ranks compute each
//     from zero and NCCL adds them; an expert's weight gradient is one GEMM over the rows of both
//     ranks here (the same rows in the same order as on one GPU) but two accumulated GEMMs there;
//     and the global gradient norm is summed in two parts (dense, experts over the EP group) and
//     the clip applied as a separate multiply. Only rounding differs.
//   - bf16 recipe (BF16 payload, weight copies and moments) and fp8 (FP8-sized experts: E4M3 +
//     scales payload, tile-padded local expert rows): rounding differences move BF16 copies, so the runs drift further apart: losses and
//     norms within 1e-3 (fp8: 1e-2) relative, weights 5e-4 whole / 5e-3 per tensor (a routing
//     near tie may flip, see the test), moments 1e-2 whole / 5e-2 per tensor (fp8 x10). A lost token, a wrong owner, an expert missing from the
//     checkpoint or an unsummed gradient misses these by orders of magnitude.
// The fp8 EP run with the fused FP8 SwiGLU kernels equals the run without them bit for bit.
// The fp32 and bf16 comparisons run twice: with ZeRO-1 (train.gpu_zero1 = true, the default: the
// tensors outside the routed experts sharded over dp, the experts' own AdamW on each rank) and
// without (a whole GpuAdamW of this rank's tensors), and ZeRO-1 must hold less optimizer state.
// In every run all ranks end with bitwise the same whole model (their dense weights, and the
// experts each gathers from its owners for the checkpoint), dp rank 0 alone writes the checkpoint,
// and the engine names the experts each rank holds. A checkpoint of the EP run resumes (each rank
// takes its experts) and continues bit for bit.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "gpu_parallel_test_util.h"
#include "model/gpu/gpu_moe.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

class GpuExpertParallel : public GpuRanksTest<2> {
 protected:
  std::vector<std::string> extra(const std::string& precision) const {
    return {"train.device=cuda", "train.precision=" + precision, "train.micro_batch=2",
            "train.batch_sequences=" + std::to_string(2 * ranks)};
  }

  // Trains the EP run (into par/) on every rank, then the single-GPU run (into ref/) on rank 0,
  // and compares them on rank 0. Returns this rank's optimizer state sizes.
  OptimizerStateBytes compare(const std::string& precision, const Tolerances& tol, bool zero1) {
    SharedTempDir dir(*world);
    const std::string par = dir.path("par"), ref = dir.path("ref");
    std::vector<std::string> par_extra = extra(precision);
    par_extra.push_back("train.ep=2");
    par_extra.push_back(std::string("train.gpu_zero1=") + (zero1 ? "true" : "false"));
    const Config config = parallel_test_config(par, par_extra);
    EXPECT_EQ(config.model.n_routed_experts % 2, 0);
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    EXPECT_EQ(mesh.shape().ep, 2);
    const int64_t local = config.model.n_routed_experts / 2,
                  first = mesh.coords().ep_rank * local;
    const std::string experts = "experts " + std::to_string(first) + ".." +
                                std::to_string(first + local - 1) + " of " +
                                std::to_string(config.model.n_routed_experts);
    std::vector<std::string> parts = {experts, std::to_string(ranks) + " ranks"};
    if (zero1) parts.push_back("ZeRO-1 over the tensors outside the routed experts");
    OptimizerStateBytes bytes;
    train_on_every_rank(config, mesh, *world, parts,
                        "after 3 steps the ranks' whole host models differ: either the dense "
                        "weights or routing biases diverged (dense gradients not summed over dp, "
                        "or a different clip per rank) or the expert gather for checkpoints is "
                        "wrong",
                        &bytes);
    std::printf("CHECK rank %d, EP 2 %s %s: optimizer state %lld bytes here\n", world->rank(),
                precision.c_str(), zero1 ? "ZeRO-1" : "whole", static_cast<long long>(bytes.held));
    if (world->rank() == 0)
      expect_matches_one_gpu("EP 2 on " + std::to_string(ranks) + " ranks" +
                                 (zero1 ? " ZeRO-1" : ""),
                             par,
                             parallel_test_config(ref, extra(precision)), precision, tol,
                             " (an expert here: its owner's weights did not reach the checkpoint,"
                             " or its gradient missed the other rank's tokens)");
    world->barrier();
    return bytes;
  }

  // Both ways; ZeRO-1 shards the dense tensors' moments, so it holds less here.
  void compare_with_and_without_zero1(const std::string& precision, const Tolerances& tol) {
    const OptimizerStateBytes whole = compare(precision, tol, false);
    const OptimizerStateBytes zero1 = compare(precision, tol, true);
    EXPECT_GT(zero1.held, 0);
    EXPECT_LT(zero1.held, whole.held) << "ZeRO-1 under EP should shard the dense tensors' moments";
  }

};

TEST_F(GpuExpertParallel, Fp32EqualsOneGpu) {
  compare_with_and_without_zero1("fp32", {1e-6, 1e-6, 1e-5, 1e-6, 1e-5});
}

// Weights within 5e-4 whole / 5e-3 per tensor: measured on 2 H200s (2026-11-23) 2.7e-5 / 1.6e-4
// with the whole optimizer and 2.4e-4 / 1.6e-3 under ZeRO-1, where the worst tensors are two
// experts of one layer (4 and 5) and the step-2 loss moves by 7e-6: a last-bit difference of the
// global norm (ZeRO-1 sums it from shards) moved a BF16 weight copy, and a near tie in one token's
// top-k went the other way. The fp32 runs of both agree to 2e-8, so the arithmetic is the same.
TEST_F(GpuExpertParallel, Bf16AgreesWithOneGpuWithinBf16Rounding) {
  compare_with_and_without_zero1("bf16", {1e-3, 5e-4, 5e-3, 1e-2, 5e-2});
}

// The fp8 recipe under expert parallelism with FP8-sized experts (hidden 256,
// moe_intermediate_size 128: the experts' GEMMs are FP8, the dispatch carries E4M3 rows plus 1x128
// scales, quantized on the sender by the GEMM's own quantizer, and each local expert's rows are
// padded to the FP8 tile) against one GPU with the same global batch. The forward GEMMs see the
// same codes and scales as on one GPU; what differs: the grouped GEMMs' row sets (one expert's
// rows from two ranks), gate_up's Wgrad cache (quantized 128x1 from the dequantized FP8 rows
// rather than from BF16, as DeepSeek-V3 does) and the bf16 rounding that follows. The bounds
// below come from the first run on 2 H200s (2026-11-23), whose first version of this test
// (weights within the bf16 tolerances) failed on the routing biases and on steps 2-3.
TEST_F(GpuExpertParallel, Fp8WithFp8SizedExpertsAgreesWithOneGpu) {
  SharedTempDir dir(*world);
  const std::vector<std::string> sizes = {"model.hidden_size=256", "model.moe_intermediate_size=128"};
  std::vector<std::string> par_extra = extra("fp8"), ref_extra = extra("fp8");
  par_extra.insert(par_extra.end(), sizes.begin(), sizes.end());
  ref_extra.insert(ref_extra.end(), sizes.begin(), sizes.end());
  par_extra.push_back("train.ep=2");
  const std::string par = dir.path("par"), ref = dir.path("ref");
  const Config config = parallel_test_config(par, par_extra);
  ASSERT_EQ(config.model.hidden_size % 128, 0);
  ASSERT_EQ(config.model.moe_intermediate_size % 128, 0);
  Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
  ASSERT_EQ(mesh.shape().ep, 2);
  train_on_every_rank(config, mesh, *world, {std::to_string(ranks) + " ranks"},
                      "after 3 fp8 steps the ranks' whole host models differ");
  bool ok = true;
  if (world->rank() == 0) {
    const TrainSummary summary = train_run(parallel_test_config(ref, ref_extra), nullptr);
    EXPECT_EQ(summary.steps_done, 3);
    const auto a = read_metrics(par), b = read_metrics(ref);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(b.empty());
    auto rel = [](double x, double y) { return std::fabs(x - y) / std::fabs(y); };
    for (size_t i = 0; i < b.size(); ++i) {
      const double loss_a = a[i]["loss"].get<double>(), loss_b = b[i]["loss"].get<double>();
      const double norm_a = a[i]["grad_norm"].get<double>(),
                   norm_b = b[i]["grad_norm"].get<double>();
      std::printf("  fp8 step %zu: loss %.9g (EP 2, FP8 dispatch) vs %.9g (one GPU), grad_norm "
                  "%.9g vs %.9g\n",
                  i + 1, loss_a, loss_b, norm_a, norm_b);
      // Step 1 starts from the same weights: the forward sees the same codes and scales (the
      // loss agrees to rounding) and only gate_up's Wgrad input differs (the norm, slightly).
      // Later steps start from weights that differ by that, amplified by this tiny model's
      // large learning rate (measured on 2 H200s: 2.6e-3 on the loss at step 3).
      EXPECT_LE(rel(loss_a, loss_b), i == 0 ? 1e-6 : 1e-2) << "loss at step " << i + 1;
      EXPECT_LE(rel(norm_a, norm_b), i == 0 ? 1e-4 : 1e-2) << "grad_norm at step " << i + 1;
    }
    const std::string pa = par + "/checkpoint-00000003", pb = ref + "/checkpoint-00000003";
    const Deviation model = relative_deviation(pa + "/model.safetensors", pb + "/model.safetensors");
    std::printf("fp8 EP 2 vs one GPU after 3 steps: model %.3g whole, %.3g worst (%s)\n",
                model.whole, model.worst_tensor, model.worst_name.c_str());
    // Measured 1.4e-2 (the routing biases move by +-gamma steps and flip with the load, so the
    // worst tensor is not compared). A wrong scale layout or padding is far off already at step 1.
    EXPECT_LE(model.whole, 5e-2);
    ok = !::testing::Test::HasFailure();
    std::printf("CHECK | fp8 EP 2 with FP8 dispatch vs one GPU (step 1: loss 1e-6, norm 1e-4; "
                "steps 2-3: 1e-2; model 5e-2) | %s\n",
                ok ? "ok" : "FAIL");
  }
  world->barrier();
}

// The fused FP8 SwiGLU kernels of the routed experts (gpu_moe.h) in the expert-parallel path: the
// fp8 EP run (FP8-sized experts, FP8 dispatch) with them and without them (set_fused_swiglu_fp8 on
// every rank) gives bitwise the same metrics and checkpoint; the fused kernels ran in the first
// run only.
TEST_F(GpuExpertParallel, Fp8FusedSwigluEqualsUnfusedBitwise) {
  SharedTempDir dir(*world);
  const bool previous = gpu::fused_swiglu_fp8_enabled();
  const std::string paths[2] = {dir.path("fused"), dir.path("unfused")};
  int64_t fused_runs[2] = {0, 0};
  for (int run = 0; run < 2; ++run) {
    std::vector<std::string> run_extra = extra("fp8");
    for (const char* setting :
         {"model.hidden_size=256", "model.moe_intermediate_size=128", "train.ep=2"})
      run_extra.push_back(setting);
    const Config config = parallel_test_config(paths[run], run_extra);
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    ASSERT_EQ(mesh.shape().ep, 2);
    gpu::set_fused_swiglu_fp8(run == 0);
    const int64_t before = gpu::fused_swiglu_fp8_runs();
    train_on_every_rank(config, mesh, *world, {std::to_string(ranks) + " ranks"},
                        "after 3 fp8 steps the ranks' whole host models differ");
    fused_runs[run] = gpu::fused_swiglu_fp8_runs() - before;
  }
  gpu::set_fused_swiglu_fp8(previous);
  EXPECT_GT(fused_runs[0], 0) << "the fused kernels never ran on rank " << world->rank();
  EXPECT_EQ(fused_runs[1], 0) << "the fused kernels ran in the unfused run";
  if (world->rank() == 0) {
    const std::string step = "/checkpoint-00000003";
    const std::string differ = first_different_file(
        paths[0] + step, paths[1] + step, {"model.safetensors", "optimizer.safetensors"});
    EXPECT_EQ(differ, "") << "fused vs unfused SwiGLU under EP: the checkpoints differ";
    expect_same_metrics(paths[0], paths[1], 0.0);
    std::printf("CHECK | fp8 EP 2 fused vs unfused SwiGLU: fused runs %lld / %lld, checkpoint %s "
                "| %s\n",
                static_cast<long long>(fused_runs[0]), static_cast<long long>(fused_runs[1]),
                differ.empty() ? "same bits" : differ.c_str(),
                ::testing::Test::HasFailure() ? "FAIL" : "ok");
  }
  world->barrier();
}

// The checkpoint an EP run writes (dp rank 0, with every expert gathered) resumes on the same
// mesh (each rank takes its experts and their moments; under ZeRO-1 its shard of the dense
// tensors' moments) and continues like an uninterrupted run: 3 steps straight equal 2 steps,
// resume, 1 step, bit for bit.
class GpuExpertParallelResume : public GpuExpertParallel,
                                public ::testing::WithParamInterface<bool> {};

TEST_P(GpuExpertParallelResume, ResumeContinuesBitForBit) {
  const bool zero1 = GetParam();
  std::printf("CHECK EP resume, %s\n", zero1 ? "ZeRO-1" : "whole optimizer");
  SharedTempDir dir(*world);
  std::vector<std::string> ep_extra = extra("fp32");
  ep_extra.push_back("train.ep=2");
  ep_extra.push_back("train.save_every=2");
  ep_extra.push_back(std::string("train.gpu_zero1=") + (zero1 ? "true" : "false"));
  const Config straight = parallel_test_config(dir.path("straight"), ep_extra);
  Mesh mesh(*world, mesh_shape(ranks, straight.train, straight.model));
  train_run(straight, &mesh);
  Config first = parallel_test_config(dir.path("resumed"), ep_extra);
  first.train.steps = 2;
  train_run(first, &mesh);
  world->barrier();
  const Config second = parallel_test_config(dir.path("resumed"), ep_extra);
  train_run(second, &mesh, dir.path("resumed") + "/checkpoint-00000002");
  world->barrier();
  if (world->rank() == 0)
    expect_resume_continues(
        dir.path("straight"), dir.path("resumed"),
        "resuming did not give each rank back its experts, their moments or the step count");
  world->barrier();
}

INSTANTIATE_TEST_SUITE_P(WholeOptimizerAndZero1, GpuExpertParallelResume, ::testing::Bool());

}  // namespace
}  // namespace frugal
