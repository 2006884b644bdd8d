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
// bit for bit, like the all-reduce path's. ZeRO-1's overlap (buckets reduce-scattered during the
// backward of the last micro-batch, on by default, so the runs above use it) is checked against
// the plain path bitwise, in the optimizer alone and through the engine (Zero1Overlap*).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

#include "core/device_context.h"
#include "gpu_parallel_test_util.h"
#include "parallel/gpu_zero1.h"
#include "parallel/nccl_communicator.h"
#include "train/gpu_optimizer.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

class GpuDataParallel : public GpuRanksTest<> {
 protected:
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

// GpuZero1Optimizer alone against GpuAdamW on the summed gradients (every rank runs the reference
// itself): tensors of odd sizes with a buffer among them, 64-element buckets (so tensors are cut at
// bucket and shard boundaries), weight decay on some tensors, gradients large enough that the clip
// is active; 3 steps, then a step with a NaN gradient on the last rank that every rank skips, the
// moments gathered into a host AdamW, and a second ZeRO-1 optimizer loaded from them that then
// steps exactly like the first. fp32 and BF16 moments.
struct DeviceTensor {
  cuda::DeviceArray<float> value, grad;
};

// Both wait for every stream first (the optimizers' work runs on the context's stream).
std::vector<float> download(const cuda::DeviceContext& ctx, const float* data, int64_t count) {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(static_cast<size_t>(count));
  EXPECT_EQ(cudaMemcpy(out.data(), data, out.size() * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  (void)ctx;
  return out;
}

void upload(float* data, const std::vector<float>& values) {
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(data, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
}

// max |a - b| / max |b|
double max_deviation(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs(double(b[i])));
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst / scale;
}

TEST_F(GpuDataParallel, Zero1OptimizerMatchesGpuAdamWWithSmallBuckets) {
  const int rank = world->rank();
  struct Spec {
    const char* name;
    int64_t count;
    ParamKind kind;
  };
  const std::vector<Spec> specs = {
      {"a.weight", 37, ParamKind::Matrix}, {"b.norm", 130, ParamKind::Norm},
      {"c.bias", 9, ParamKind::Buffer},    {"d.weight", 1, ParamKind::Matrix},
      {"e.weight", 257, ParamKind::Matrix}, {"f.norm", 64, ParamKind::Norm},
      {"g.weight", 5, ParamKind::Matrix}};
  OptimConfig optim;
  optim.lr = 1e-2;
  optim.weight_decay = 0.1;
  optim.grad_clip = 1.0;
  ParamStore<float> store;  // names and shapes for the host AdamW
  for (const Spec& spec : specs) store.add(spec.name, {spec.count}, spec.kind);

  for (const Recipe recipe : {Recipe::Fp32, Recipe::Bf16}) {
    const bool fp32 = recipe == Recipe::Fp32;
    const double value_tol = fp32 ? 1e-6 : 1e-4, moment_tol = fp32 ? 1e-5 : 2e-2;
    cuda::DeviceContext ctx(rank);
    std::unique_ptr<Communicator> nccl = make_nccl_communicator(*world, rank);
    set_input_stream(*nccl, ctx.stream);
    // Three models of the same tensors: ZeRO-1 (z), its reloaded twin (t), the reference (r).
    std::vector<DeviceTensor> z, t, r;
    std::vector<gpu::DeviceParam> zp, tp, rp;
    for (auto* set : {&z, &t, &r})
      for (const Spec& spec : specs)
        set->push_back({cuda::DeviceArray<float>(ctx, spec.count),
                        cuda::DeviceArray<float>(ctx, spec.count)});
    for (auto [set, params] : {std::pair{&z, &zp}, std::pair{&t, &tp}, std::pair{&r, &rp}})
      for (size_t i = 0; i < specs.size(); ++i) {
        gpu::DeviceParam p;
        p.name = specs[i].name;
        p.shape = {specs[i].count};
        p.count = specs[i].count;
        p.kind = specs[i].kind;
        p.trainable = specs[i].kind != ParamKind::Buffer;
        p.weight_decay = specs[i].kind == ParamKind::Matrix;
        p.value = (*set)[i].value.data();
        p.grad = p.trainable ? (*set)[i].grad.data() : nullptr;
        params->push_back(p);
      }
    for (size_t i = 0; i < specs.size(); ++i) {
      std::mt19937 gen(100 + static_cast<unsigned>(i));
      std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
      std::vector<float> init(static_cast<size_t>(specs[i].count));
      for (float& x : init) x = uniform(gen);
      upload(z[i].value.data(), init);
      upload(r[i].value.data(), init);
    }
    int z_refreshes = 0;
    gpu::GpuZero1Optimizer zero1(ctx, optim, zp, recipe, [&z_refreshes] { ++z_refreshes; }, *nccl,
                                 *world, 64);
    gpu::GpuAdamW reference(ctx, optim, rp, recipe, [] {});
    std::printf("CHECK zero1 unit, %s moments, rank %d: %lld buckets, shard %lld of %lld "
                "elements, state %lld bytes (GpuAdamW %lld)\n",
                fp32 ? "fp32" : "bf16", rank, static_cast<long long>(zero1.buckets()),
                static_cast<long long>(zero1.shard_elements()),
                static_cast<long long>(zero1.total_elements()),
                static_cast<long long>(zero1.state_bytes()),
                static_cast<long long>(reference.state_bytes()));
    EXPECT_GE(zero1.buckets(), 2);
    EXPECT_EQ(zero1.total_elements(), 37 + 130 + 1 + 257 + 64 + 5);
    if (world->size() > 1) {
      EXPECT_LT(zero1.state_bytes(), reference.state_bytes());
    }

    // Rank `from`'s gradient of tensor i at step s (every rank can make every rank's).
    auto gradient = [&](int from, int s, size_t i) {
      std::mt19937 gen(1000 * s + 10 * from + static_cast<unsigned>(i));
      std::normal_distribution<float> normal(0.0f, 3.0f);
      std::vector<float> g(static_cast<size_t>(specs[i].count));
      for (float& x : g) x = normal(gen);
      return g;
    };
    auto set_gradients = [&](std::vector<DeviceTensor>& own, int s, bool poison) {
      for (size_t i = 0; i < specs.size(); ++i) {
        if (specs[i].kind == ParamKind::Buffer) continue;
        std::vector<float> mine = gradient(rank, s, i), sum = gradient(0, s, i);
        for (int from = 1; from < world->size(); ++from) {
          const std::vector<float> g = gradient(from, s, i);
          for (size_t k = 0; k < sum.size(); ++k) sum[k] += g[k];
        }
        if (poison && specs[i].count == 257) {
          sum[3] = NAN;
          if (rank == world->size() - 1) mine[3] = NAN;
        }
        upload(own[i].grad.data(), mine);
        upload(r[i].grad.data(), sum);
      }
    };
    auto compare_values = [&](const std::vector<DeviceTensor>& a, const char* what, int s) {
      for (size_t i = 0; i < specs.size(); ++i) {
        const double dev = max_deviation(download(ctx, a[i].value.data(), specs[i].count),
                                         download(ctx, r[i].value.data(), specs[i].count));
        EXPECT_LE(dev, value_tol) << what << " " << specs[i].name << " after step " << s;
      }
    };
    for (int s = 1; s <= 3; ++s) {
      set_gradients(z, s, false);
      zero1.reduce_scatter();
      const auto info = zero1.step(1e-2);
      const auto ref = reference.step(1e-2);
      EXPECT_FALSE(info.skipped);
      EXPECT_NEAR(info.grad_norm, ref.grad_norm, 1e-6 * ref.grad_norm) << "step " << s;
      EXPECT_LT(info.clip_scale, 1.0) << "the test means the clip to be active";
      EXPECT_NEAR(info.clip_scale, ref.clip_scale, 1e-6 * ref.clip_scale);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      compare_values(z, "ZeRO-1", s);
      if (s == 3)
        std::printf("CHECK zero1 unit, %s, rank %d, step 3: norm %.9g vs %.9g (GpuAdamW)\n",
                    fp32 ? "fp32" : "bf16", rank, info.grad_norm, ref.grad_norm);
    }
    EXPECT_EQ(z_refreshes, 3);
    // A NaN in the last rank's gradient: every rank skips, nothing changes.
    std::vector<std::vector<float>> before;
    for (size_t i = 0; i < specs.size(); ++i)
      before.push_back(download(ctx, z[i].value.data(), specs[i].count));
    set_gradients(z, 4, true);
    zero1.reduce_scatter();
    const auto skipped = zero1.step(1e-2);
    EXPECT_TRUE(skipped.skipped) << "rank " << rank;
    EXPECT_TRUE(reference.step(1e-2).skipped);
    EXPECT_EQ(zero1.step_count(), 3);
    EXPECT_EQ(zero1.skipped_steps(), 1);
    EXPECT_EQ(z_refreshes, 3);
    for (size_t i = 0; i < specs.size(); ++i)
      EXPECT_EQ(download(ctx, z[i].value.data(), specs[i].count), before[i])
          << specs[i].name << " changed in a skipped step";

    // The moments, gathered into a host AdamW, against the reference's.
    AdamW<float> gathered(optim, store), expected(optim, store);
    zero1.download(gathered);
    reference.download(expected);
    EXPECT_EQ(gathered.step_count(), 3);
    for (size_t k = 0; k < gathered.state().size(); ++k) {
      EXPECT_LE(max_deviation(gathered.state()[k].m, expected.state()[k].m), moment_tol)
          << "m of " << gathered.state()[k].name;
      EXPECT_LE(max_deviation(gathered.state()[k].v, expected.state()[k].v), moment_tol)
          << "v of " << gathered.state()[k].name;
    }
    // A twin loaded from the gathered state (each rank its shard) steps exactly like ZeRO-1.
    for (size_t i = 0; i < specs.size(); ++i) upload(t[i].value.data(), before[i]);
    gpu::GpuZero1Optimizer twin(ctx, optim, tp, recipe, [] {}, *nccl, *world, 64);
    twin.upload(gathered);
    EXPECT_EQ(twin.step_count(), 3);
    set_gradients(z, 5, false);
    set_gradients(t, 5, false);
    zero1.reduce_scatter();
    zero1.step(1e-2);
    twin.reduce_scatter();
    twin.step(1e-2);
    for (size_t i = 0; i < specs.size(); ++i)
      EXPECT_EQ(download(ctx, t[i].value.data(), specs[i].count),
                download(ctx, z[i].value.data(), specs[i].count))
          << specs[i].name << ": the reloaded optimizer stepped differently";

    // The overlap (reduce_scatter_ready) against the plain path, from the same state: ZeRO-1 is
    // told its tensors' gradients are final one by one in reverse order (like a backward) and
    // launches each bucket as it becomes ready; the twin reduce-scatters in the step. Then only
    // the last three are reported and the step does the rest. Both must step bitwise alike.
    // On 2 ranks (S = 320, B = 64: buckets {a,e}, {b,e}, {b,e}, {b,d,e,f}, {e,f,g}) the buckets
    // become ready as 0, 0, 1 (e: bucket 4), 1, 1, 4 (b: 1..3), 5 (a: 0).
    const std::vector<int64_t> ready_after_two_ranks = {0, 0, 1, 1, 1, 4, 5};
    for (int s = 6; s <= 7; ++s) {
      set_gradients(z, s, false);
      set_gradients(t, s, false);
      const size_t reported = s == 6 ? specs.size() : 3;
      std::vector<int64_t> ready_after;
      for (size_t n = 0; n < reported; ++n) {
        const size_t i = specs.size() - 1 - n;
        const std::vector<size_t> final_params = {i};
        zero1.reduce_scatter_ready(final_params);
        ready_after.push_back(zero1.early_buckets_this_step());
      }
      for (size_t n = 1; n < ready_after.size(); ++n) EXPECT_LE(ready_after[n - 1], ready_after[n]);
      if (world->size() == 2) {
        EXPECT_EQ(ready_after, std::vector<int64_t>(ready_after_two_ranks.begin(),
                                                    ready_after_two_ranks.begin() +
                                                        static_cast<long>(reported)))
            << "step " << s << ": buckets launched after each notification";
      }
      if (s == 6) {
        EXPECT_EQ(ready_after.back(), zero1.buckets()) << "every bucket ready after every tensor";
        // A repeated notification is refused.
        const std::vector<size_t> again = {0};
        EXPECT_THROW(zero1.reduce_scatter_ready(again), Error);
      }
      const int64_t early = zero1.early_buckets_this_step();
      zero1.reduce_scatter();
      EXPECT_EQ(zero1.early_buckets_last_step(), early);
      EXPECT_EQ(zero1.early_buckets_this_step(), 0);
      const auto overlapped = zero1.step(1e-2);
      twin.reduce_scatter();
      EXPECT_EQ(twin.early_buckets_last_step(), 0);
      const auto plain = twin.step(1e-2);
      EXPECT_EQ(overlapped.grad_norm, plain.grad_norm) << "step " << s;
      for (size_t i = 0; i < specs.size(); ++i)
        EXPECT_EQ(download(ctx, z[i].value.data(), specs[i].count),
                  download(ctx, t[i].value.data(), specs[i].count))
            << specs[i].name << ", step " << s
            << ": the overlapped reduce-scatter gave other weights than the plain one";
      std::printf("CHECK zero1 overlap unit, %s, rank %d, step %d: %lld of %lld buckets launched "
                  "before the step, weights bitwise equal to the plain path: %s\n",
                  fp32 ? "fp32" : "bf16", rank, s, static_cast<long long>(early),
                  static_cast<long long>(zero1.buckets()),
                  ::testing::Test::HasFailure() ? "NO (see failures)" : "yes");
    }
    EXPECT_GT(zero1.early_buckets_total(), 0);
    world->barrier();
  }
}

// The engine's overlap (GpuEngine under ZeRO-1: buckets reduce-scattered during the backward of
// the step's last micro-batch) on and off (set_zero1_overlap, the override of
// FRUGAL_ZERO1_OVERLAP=0): 3 steps of 2 micro-batches per rank, 2048-element buckets
// (FRUGAL_ZERO1_BUCKET_ELEMENTS); the weights of every rank, the logged metrics and the
// checkpoints must be bitwise equal, and the counters must show every bucket launched before the
// optimizer step with the overlap on, none with it off. (In the tiny model the buckets' parts on
// the last rank hold the head and MTP module, which are final only at the end of the backward, so
// on 2 ranks no bucket fires on a layer's notification; the count is printed.)
TEST_F(GpuDataParallel, Zero1OverlapOnAndOffGiveBitwiseEqualWeights) {
  SharedTempDir dir(*world);
  const std::vector<std::string> extra = {
      "train.device=cuda", "train.precision=fp32", "train.micro_batch=2",
      "train.batch_sequences=" + std::to_string(4 * ranks), "train.gpu_zero1=true",
      "train.save_every=3"};
  ASSERT_EQ(setenv("FRUGAL_ZERO1_BUCKET_ELEMENTS", "2048", 1), 0);
  std::vector<std::vector<float>> weights;
  std::vector<GpuZero1BucketCounts> counts;
  for (const bool overlap : {true, false}) {
    gpu::set_zero1_overlap(overlap);
    const Config config = parallel_test_config(dir.path(overlap ? "on" : "off"), extra);
    Mesh mesh(*world, mesh_shape(ranks, config.train, config.model));
    SyntheticSources data(config);
    Trainer trainer(config, data.train, &data.val, true, &mesh);
    const TrainSummary summary = trainer.run();
    EXPECT_EQ(summary.steps_done, 3);
    weights.push_back(all_values(trainer));
    EXPECT_TRUE(same_on_every_rank(*world, weights.back())) << "overlap " << overlap;
    counts.push_back(gpu_zero1_bucket_counts(trainer.engine()));
    std::printf("CHECK zero1 overlap engine, rank %d, overlap %s: %lld buckets, %lld launched "
                "before the optimizer step in the last step (%lld on a layer's notification), "
                "%lld over the run\n",
                world->rank(), overlap ? "on" : "off", static_cast<long long>(counts.back().buckets),
                static_cast<long long>(counts.back().early_last_step),
                static_cast<long long>(counts.back().on_layers_last_step),
                static_cast<long long>(counts.back().early_total));
  }
  gpu::set_zero1_overlap(std::nullopt);
  ASSERT_EQ(unsetenv("FRUGAL_ZERO1_BUCKET_ELEMENTS"), 0);
  EXPECT_GE(counts[0].buckets, 3) << "the test means several buckets";
  EXPECT_EQ(counts[0].early_last_step, counts[0].buckets)
      << "with the overlap on, every bucket is launched during the last backward";
  EXPECT_EQ(counts[0].early_total, 3 * counts[0].buckets);
  EXPECT_LE(counts[0].on_layers_last_step, counts[0].early_last_step);
  EXPECT_EQ(counts[1].buckets, counts[0].buckets);
  EXPECT_EQ(counts[1].early_total, 0) << "with the overlap off, no bucket before the step";
  ASSERT_EQ(weights[0].size(), weights[1].size());
  size_t differ = 0;
  for (size_t i = 0; i < weights[0].size(); ++i)
    differ += std::memcmp(&weights[0][i], &weights[1][i], sizeof(float)) != 0 ? 1 : 0;
  EXPECT_EQ(differ, 0u) << "of " << weights[0].size()
                        << " weights differ between the overlap on and off";
  world->barrier();
  if (world->rank() == 0) {
    const std::string on = dir.path("on"), off = dir.path("off");
    EXPECT_EQ(first_different_file(on + "/checkpoint-00000003", off + "/checkpoint-00000003",
                                   {"model.safetensors", "optimizer.safetensors",
                                    "trainer_state.json"}),
              "");
    expect_same_metrics(on, off, 0.0);  // losses, gradient norms, validation: bitwise
  }
  world->barrier();
}

INSTANTIATE_TEST_SUITE_P(AllReduceAndZero1, GpuDataParallelResume, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Zero1") : std::string("AllReduce");
                         });

}  // namespace
}  // namespace frugal
