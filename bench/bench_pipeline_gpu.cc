// Pipeline-parallel training on GPUs (parallel/gpu_pipeline_runner.h) against one GPU, the same
// global batch: a preset's model (random init from train.seed / train.init_std on the host, as the
// GPU engine), random tokens, per optimizer step M micro-batches of B sequences of `seq` tokens
// (forward, backward, AdamW with the config's clip, balance-bias update). Run with one GPU per
// rank:
//   mpirun -np P build/bench_pipeline_gpu CONFIG.toml RECIPE SCHEDULE M B SEQ STEPS [--json FILE]
//       [--skip-single] [--section.key=value ...]
//   e.g. mpirun -np 2 build/bench_pipeline_gpu configs/bench-1b.toml bf16 dualpipev 8 4 4096 4
// The layers per stage follow train.pp_stage_layers (parallel/stage_layout.h; default "auto", the
// cost-balanced split): --train.pp_stage_layers=even for the even split, =3,4,3,2 for a given one.
// The split used is printed at the start and written to the JSON (stage_layers).
// First rank 0 alone trains the whole model on its GPU for the steps (GpuTransformer + GpuAdamW,
// the M micro-batches accumulated with loss scale 1/M) and frees it (--skip-single leaves this
// out), then the P ranks train the same steps from the same initial weights with the SCHEDULE
// (1f1b, zb1p, dualpipe, dualpipev) over P pipeline ranks. Prints per step: the mean main loss of
// the M micro-batches on one GPU and on the pipeline, the step time (wall clock around a
// synchronized step; the pipeline's is the slowest rank's) and tokens/s of both. The W steps of
// ZB1P/DualPipe(V) run the weight-gradient GEMMs their B deferred (see gpu_pipeline_runner.h).
// Writes the table as JSON with --json.
// The measured bubble (the runner's step timing, parallel/pipeline_timing.h, always on here): per
// step and rank, the wall time of runner.step, its busy (F, B and W on the compute stream) and
// idle time, next to the bubble the schedule should have with the step's measured mean F, B and W:
// the simulated idle of that rank (simulate_schedule) and Table 2's formula (table2_bubble). A W
// that runs inside its B (it is the rank's next step) counts 0; an FB step is F + B + W.
#include "mpi_bench_main.h"

#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL) && defined(FRUGAL_HAVE_MPI)

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "core/error.h"
#include "core/parse_int.h"
#include "core/rng.h"
#include "io/config_io.h"
#include "model/gpu/gpu_transformer.h"
#include "model/transformer.h"
#include "parallel/gpu_pipeline_runner.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline_timing.h"
#include "parallel/schedule.h"
#include "train/gpu_optimizer.h"
#include "train/recipe.h"
#include "train/schedule.h"

using namespace frugal;

namespace {

constexpr const char* kUsage =
    "usage: mpirun -np P bench_pipeline_gpu CONFIG.toml RECIPE(fp32|bf16|fp8) "
    "SCHEDULE(1f1b|zb1p|dualpipe|dualpipev) MICRO_BATCHES SEQUENCES SEQ STEPS [--json FILE] "
    "[--skip-single] [--section.key=value ...]\n";

int64_t parse_positive(const std::string& text, const char* what) {
  const int64_t value = parse_int64(text).value_or(0);
  FRUGAL_CHECK(value > 0, "{} must be a positive integer, got '{}'", what, text);
  return value;
}

int local_device(int world_rank, int devices) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* value = std::getenv(name); value && *value) return std::atoi(value) % devices;
  return world_rank % devices;
}

struct StepResult {
  double loss = 0;  // mean main loss over the micro-batches
  double ms = 0;
  double grad_norm = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(int argc, char** argv) {
  std::vector<std::string> positional, overrides;
  std::string json_path;
  bool skip_single = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--skip-single") {
      skip_single = true;
    } else if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      overrides.push_back(a);
    } else {
      positional.push_back(a);
    }
  }
  auto world = mpi_world_communicator();
  const int rank = world->rank(), ranks = world->size();
  if (positional.size() != 7) {
    if (rank == 0) std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string config_path = positional[0], recipe_text = positional[1];
  const pipeline::ScheduleKind kind = pipeline::parse_schedule_kind(positional[2], "SCHEDULE");
  const int micro_batches = static_cast<int>(parse_positive(positional[3], "MICRO_BATCHES"));
  const int64_t sequences = parse_positive(positional[4], "SEQUENCES");
  const int64_t seq = parse_positive(positional[5], "SEQ");
  const int64_t steps = parse_positive(positional[6], "STEPS");

  std::vector<std::string> all = {"train.precision=" + recipe_text,
                                  "train.seq_len=" + std::to_string(seq)};
  all.insert(all.end(), overrides.begin(), overrides.end());
  const Config config = load_config(config_path, all);
  const TrainConfig& tc = config.train;
  // The schedule first: an impossible (kind, ranks, M) fails on every rank before any allocation.
  const int stages = pipeline::pipeline_stage_count(kind, ranks);
  pipeline::Schedule schedule = pipeline::build_schedule(kind, stages, micro_batches);
  const StageLayout layout = resolve_stage_layout(config.train.pp_stage_layers, config.model, kind,
                                                  stages, seq);
  if (rank == 0)
    std::printf("%s\n", describe_stage_layout(config.train.pp_stage_layers, layout, config.model,
                                                kind, seq)
                           .c_str());

  int devices = 0;
  FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&devices));
  FRUGAL_CHECK(devices > 0, "no GPU");
  cuda::DeviceContext ctx(local_device(rank, devices));
  const RecipeChoice choice = choose_recipe(parse_recipe(recipe_text), ctx.compute_capability);
  if (rank == 0 && !choice.note.empty()) std::printf("%s\n", choice.note.c_str());

  // The initial weights, on every rank (the same seed): the engine's initialization.
  Transformer<float> host(config.model);
  host.init_weights(tc.seed, tc.init_std);
  for (const auto& param : host.params().all()) std::vector<float>().swap(param->grad);

  const int64_t rows = sequences * seq, total_sequences = micro_batches * sequences;
  const int64_t vocab = config.model.vocab_size;
  std::vector<int32_t> tokens(total_sequences * seq), targets(total_sequences * seq), row(seq + 1);
  auto fill_batch = [&](int64_t step) {  // the same tokens on every rank and in both runs
    for (int64_t b = 0; b < total_sequences; ++b) {
      RandomStream rng(tc.seed, static_cast<uint64_t>(step * total_sequences + b));
      for (int64_t t = 0; t <= seq; ++t)
        row[t] = std::min<int32_t>(static_cast<int32_t>(rng.uniform(t) * vocab), vocab - 1);
      std::copy(row.begin(), row.end() - 1, tokens.begin() + b * seq);
      std::copy(row.begin() + 1, row.end(), targets.begin() + b * seq);
    }
  };
  auto weights_at = [&](int64_t step) {
    return LossWeights{schedule_value(tc.mtp_weight, step), tc.balance_alpha};
  };

  // 1. One GPU (rank 0), the whole model, the M micro-batches accumulated.
  std::vector<StepResult> single(steps);
  if (rank == 0 && !skip_single) {
    gpu::GpuTransformer model(ctx, config.model, choice.recipe);
    model.upload(host.params());
    gpu::GpuAdamW optimizer(ctx, config.optim, model);
    for (int64_t step = 0; step < steps; ++step) {
      fill_batch(step);
      const auto start = std::chrono::steady_clock::now();
      model.zero_grad();
      double loss = 0;
      for (int m = 0; m < micro_batches; ++m)
        loss += model.forward_backward(tokens.data() + m * rows, targets.data() + m * rows,
                                       sequences, seq, weights_at(step), 1.0 / micro_batches)
                    .main;
      const auto info = optimizer.step(learning_rate(config.optim, config.schedule, step));
      model.update_balance_bias(info.skipped ? 0.0 : schedule_value(tc.bias_update_speed, step));
      ctx.synchronize();
      single[step] = {loss / micro_batches, seconds_since(start) * 1e3, info.grad_norm};
      std::printf("one GPU step %lld: %.1f ms, loss %.4f, gnorm %.3g\n",
                  static_cast<long long>(step + 1), single[step].ms, single[step].loss,
                  info.grad_norm);
      std::fflush(stdout);
    }
  }  // the single-GPU model and optimizer are freed here
  ctx.allocator.empty_cache();  // their blocks go back to CUDA (NCCL and the pipeline need room)
  ctx.allocator.reset_peak();
  world->barrier();

  // 2. The pipeline over every rank.
  auto nccl = make_nccl_communicator(*world, ctx.device);
  std::vector<StepResult> piped(steps);
  std::vector<std::vector<pipeline::PipelineTiming>> timings(steps);  // [step][rank]
  int64_t peak_bytes = 0;
  {
    gpu::GpuPipelineRunner runner(ctx, config.model, choice.recipe, schedule, *nccl, *world, {},
                                  layout);
    runner.set_timing(true);
    runner.upload(host.params());
    gpu::GpuPipelineAdamW optimizer(ctx, config.optim, runner);
    for (int64_t step = 0; step < steps; ++step) {
      fill_batch(step);
      world->barrier();
      const auto start = std::chrono::steady_clock::now();
      runner.zero_grad();
      const std::vector<Losses> losses =
          runner.step(tokens.data(), targets.data(), sequences, seq, weights_at(step));
      timings[step] = runner.gather_timing();
      const auto info = optimizer.step(learning_rate(config.optim, config.schedule, step));
      runner.update_balance_bias(info.skipped ? 0.0 : schedule_value(tc.bias_update_speed, step));
      ctx.synchronize();
      double ms = seconds_since(start) * 1e3;
      std::vector<double> all_ms(ranks);
      world->all_gather(all_ms.data(), &ms, 1, CommType::F64);
      ms = *std::max_element(all_ms.begin(), all_ms.end());
      double loss = 0;
      for (const Losses& l : losses) loss += l.main;
      piped[step] = {loss / micro_batches, ms, info.grad_norm};
      if (rank == 0) {
        std::printf("pipeline step %lld: %.1f ms, loss %.4f, gnorm %.3g\n",
                    static_cast<long long>(step + 1), ms, piped[step].loss, info.grad_norm);
        std::fflush(stdout);
      }
    }
    peak_bytes = static_cast<int64_t>(ctx.allocator.peak_bytes_in_use());
  }
  std::vector<int64_t> peaks(ranks);
  world->all_gather(peaks.data(), &peak_bytes, 1, CommType::I64);

  if (rank == 0) {
    const double tokens_per_step = static_cast<double>(total_sequences * seq);
    std::printf("\n%s, %s, %s over %d GPUs (%d stages of %s layers), %d micro-batches of %lld x "
                "%lld tokens\n",
                config_path.c_str(), std::string(recipe_name(choice.recipe)).c_str(),
                pipeline::schedule_kind_name(kind), ranks, stages, layout.text().c_str(),
                micro_batches, static_cast<long long>(sequences), static_cast<long long>(seq));
    std::printf("%5s %14s %14s %12s %12s %14s %14s\n", "step", "loss (1 GPU)", "loss (pipe)",
                "ms (1 GPU)", "ms (pipe)", "tok/s (1 GPU)", "tok/s (pipe)");
    nlohmann::json rows_json = nlohmann::json::array();
    for (int64_t s = 0; s < steps; ++s) {
      const double single_tok = skip_single ? 0.0 : tokens_per_step / (single[s].ms / 1e3);
      const double pipe_tok = tokens_per_step / (piped[s].ms / 1e3);
      std::printf("%5lld %14.6f %14.6f %12.1f %12.1f %14.0f %14.0f\n",
                  static_cast<long long>(s + 1), single[s].loss, piped[s].loss, single[s].ms,
                  piped[s].ms, single_tok, pipe_tok);
      rows_json.push_back({{"step", s + 1},
                           {"loss_one_gpu", single[s].loss},
                           {"loss_pipeline", piped[s].loss},
                           {"grad_norm_one_gpu", single[s].grad_norm},
                           {"grad_norm_pipeline", piped[s].grad_norm},
                           {"ms_one_gpu", single[s].ms},
                           {"ms_pipeline", piped[s].ms},
                           {"tokens_per_s_one_gpu", single_tok},
                           {"tokens_per_s_pipeline", pipe_tok}});
    }
    // The measured bubble against the schedule's, with the step's measured F and B (all ranks).
    std::printf("\nbubble per step and rank (W: the deferred weight GEMMs, 0 where a W ran "
                "inside its B; FB = F + B + W)\n");
    std::printf("%5s %5s %10s %10s %10s %9s %9s %9s %16s %16s\n", "step", "rank", "step ms",
                "busy ms", "idle ms", "F ms", "B ms", "W ms", "sim. idle ms", "Table 2 ms");
    nlohmann::json bubble_json = nlohmann::json::array();
    for (int64_t s = 0; s < steps; ++s) {
      double f = 0, b = 0, w = 0;
      int fn = 0, bn = 0, wn = 0;
      for (const auto& t : timings[s]) {
        f += t.f_ms * t.f_count, fn += t.f_count;
        b += t.b_ms * t.b_count, bn += t.b_count;
        w += t.w_ms * t.w_count, wn += t.w_count;
      }
      f = fn ? f / fn : 0;
      b = bn ? b / bn : 0;
      w = wn ? w / wn : 0;
      const pipeline::ExpectedBubble expected = pipeline::expected_bubble(schedule, f, b, w);
      for (int r = 0; r < ranks; ++r) {
        const pipeline::PipelineTiming& t = timings[s][r];
        std::printf("%5lld %5d %10.2f %10.2f %10.2f %9.3f %9.3f %9.3f %16.2f %16.2f\n",
                    static_cast<long long>(s + 1), r, t.step_ms, t.busy_ms, t.idle_ms, t.f_ms,
                    t.b_ms, t.w_ms, expected.simulated[r], expected.table2);
        bubble_json.push_back({{"step", s + 1},
                               {"rank", r},
                               {"step_ms", t.step_ms},
                               {"busy_ms", t.busy_ms},
                               {"idle_ms", t.idle_ms},
                               {"f_ms", t.f_ms},
                               {"b_ms", t.b_ms},
                               {"f_count", t.f_count},
                               {"b_count", t.b_count},
                               {"w_ms", t.w_ms},
                               {"w_count", t.w_count},
                               {"mean_f_ms_all_ranks", f},
                               {"mean_b_ms_all_ranks", b},
                               {"mean_w_ms_all_ranks", w},
                               {"simulated_idle_ms", expected.simulated[r]},
                               {"table2_bubble_ms", expected.table2}});
      }
    }
    for (int r = 0; r < ranks; ++r)
      std::printf("rank %d: peak device memory of the pipeline %.2f GiB\n", r,
                  static_cast<double>(peaks[r]) / (1024.0 * 1024.0 * 1024.0));
    if (!json_path.empty()) {
      const nlohmann::json result = {{"bench", "pipeline_gpu"},
                                     {"config", config_path},
                                     {"recipe", std::string(recipe_name(choice.recipe))},
                                     {"schedule", pipeline::schedule_kind_name(kind)},
                                     {"ranks", ranks},
                                     {"stages", stages},
                                     {"stage_layers", layout.layers},
                                     {"micro_batches", micro_batches},
                                     {"sequences_per_micro_batch", sequences},
                                     {"seq", seq},
                                     {"single_gpu_run", !skip_single},
                                     {"peak_bytes_per_rank", peaks},
                                     {"steps", rows_json},
                                     {"bubble", bubble_json}};
      std::ofstream out(json_path);
      FRUGAL_CHECK(out.good(), "cannot write {}", json_path);
      out << result.dump(2) << "\n";
      std::printf("wrote %s\n", json_path.c_str());
    }
  }
  world->barrier();
  return 0;
}

}  // namespace

#endif

int main(int argc, char** argv) {
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL) && defined(FRUGAL_HAVE_MPI)
  return frugal::mpi_bench_main("bench_pipeline_gpu", run, argc, argv);
#else
  return frugal::mpi_bench_main("bench_pipeline_gpu", nullptr, argc, argv);
#endif
}
