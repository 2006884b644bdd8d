// The training loop (see trainer.h): data, schedules, batch ramp, the micro-batches of this rank,
// losses, logging, metrics, validation and checkpoints around a StepEngine.
#include "train/trainer.h"

#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "io/atomic_file.h"
#include "io/config_io.h"
#include "train/schedule.h"

extern "C" void openblas_set_num_threads(int);

namespace frugal {

Trainer::Trainer(const Config& config, DataSource& train, DataSource* val, bool quiet,
                 const Mesh* mesh)
    : config_(config),
      mesh_(mesh),
      train_(train),
      val_(val),
      quiet_(quiet || (mesh != nullptr && mesh->world().rank() != 0)) {
  FRUGAL_CHECK(train.vocab_size() <= config.model.vocab_size,
               "the data's tokenizer has {} ids but model.vocab_size is {}", train.vocab_size(),
               config.model.vocab_size);
  if (config.train.threads > 0) {
    omp_set_num_threads(static_cast<int>(config.train.threads));
    openblas_set_num_threads(static_cast<int>(config.train.threads));
  }
  engine_ = make_step_engine(config, mesh);
  state_.train_data = train_.state();
  if (val_) val_start_ = val_->state();
}

Trainer::~Trainer() = default;

void Trainer::log(const std::string& line) const {
  if (quiet_) return;
  // Erase a progress bar drawn on a terminal's current line; it redraws on the next update.
  if (progress_ && progress_->enabled()) std::fputs("\r\x1b[K", stderr), std::fflush(stderr);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

namespace {

// Keeps the metrics records of steps <= `step` (a resumed run re-does the steps after its
// checkpoint, so records of a crashed run's later steps would otherwise appear twice).
void truncate_metrics_after(const std::string& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return;
  std::string line, kept;
  bool dropped = false;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
        record["step"].get<int64_t>() > step) {
      dropped = true;
      continue;
    }
    kept += line + "\n";
  }
  in.close();
  if (dropped) write_file_atomic(path, kept);
}

// The first model setting in which two configs differ, as "key: a vs b" ("" when equal).
std::string first_model_difference(const ModelConfig& saved, const ModelConfig& here) {
  const nlohmann::json a = model_config_to_hf_json(saved), b = model_config_to_hf_json(here);
  for (auto it = a.begin(); it != a.end(); ++it)
    if (!b.contains(it.key()) || b.at(it.key()) != it.value())
      return fmt::format("model.{}: checkpoint {}, config {}", it.key(), it.value().dump(),
                         b.contains(it.key()) ? b.at(it.key()).dump() : "absent");
  return saved == here ? "" : "model settings";
}

}  // namespace

void Trainer::resume(const std::string& checkpoint_dir) {
  const Config saved = load_checkpoint_config(checkpoint_dir);
  const std::string difference = first_model_difference(saved.model, config_.model);
  FRUGAL_CHECK(difference.empty(),
               "{}: the checkpoint's model differs from this run's config ({}); resume with the "
               "same [model] settings",
               checkpoint_dir, difference);
  engine_->load_checkpoint(checkpoint_dir);
  load_checkpoint_trainer_state(checkpoint_dir, state_);
  train_.restore(state_.train_data);
}

double Trainer::validation_loss() {
  if (!val_) return -1;
  val_->restore(val_start_);
  const int64_t mb = config_.train.micro_batch, seq = config_.train.seq_len;
  const int64_t batches = config_.train.eval_batches, dp = dp_size();
  std::vector<int32_t> tokens(mb * seq), targets(mb * seq);
  // Batch i runs on dp rank i % dp. Under expert parallelism every rank must run as many forwards
  // as the others (each is collective): a rank past the last batch repeats it and discards it.
  const bool collective_forward = expert_parallel();
  const int64_t rounds = (batches + dp - 1) / dp * dp;
  std::vector<double> losses(static_cast<size_t>(batches), 0.0);
  for (int64_t i = 0; i < rounds; ++i) {
    if (i < batches) val_->next_batch(tokens.data(), targets.data(), mb, seq);
    if (i % dp != dp_rank() || (i >= batches && !collective_forward)) continue;
    const double loss = engine_->evaluate(tokens.data(), targets.data(), mb, seq).main;
    if (i < batches) losses[i] = loss;
  }
  if (mesh_) mesh_->dp().all_reduce_sum(losses.data(), batches, CommType::F64);  // one owner each
  double sum = 0;
  for (double loss : losses) sum += loss;
  return sum / static_cast<double>(std::max<int64_t>(batches, 1));
}

std::string Trainer::save() {
  // Collective in a multi-process run: the engine gathers the state to dp rank 0, which writes.
  const StepEngine::CheckpointState full = engine_->checkpoint_state();
  std::string dir;
  if (full.model != nullptr)
    dir = save_checkpoint(config_.train.out_dir, config_, *full.model, *full.optimizer, state_);
  if (mesh_) mesh_->world().barrier();  // the checkpoint exists for every rank once this returns
  return dir;
}

TrainSummary Trainer::run(int64_t stop_after) {
  const TrainConfig& tc = config_.train;
  const int64_t seq = tc.seq_len, mb = tc.micro_batch;
  const int64_t last_step =
      stop_after >= 0 ? std::min(tc.steps, state_.step + stop_after) : tc.steps;
  const std::string metrics_path = tc.out_dir + "/metrics.jsonl";
  // Logs, metrics and checkpoints: world rank 0 (dp rank 0 of the first pipeline stage).
  const bool writer = mesh_ == nullptr || mesh_->world().rank() == 0;
  if (writer && state_.step > 0) truncate_metrics_after(metrics_path, state_.step);
  if (writer) metrics_.open(metrics_path, /*append=*/state_.step > 0);
  const int64_t dp = dp_size();
  const double train_flops_per_token = 3.0 * engine_->flops_per_token(seq);
  const double peak_flops = engine_->peak_flops();
  if (!announced_) {
    log("device: " + engine_->description());
    if (!engine_->recipe_note().empty()) log(engine_->recipe_note());
    announced_ = true;
  }
  TrainSummary summary;
  std::vector<int32_t> tokens(mb * seq), targets(mb * seq);
  ProgressBar progress("train", last_step, stderr, !quiet_ && isatty(STDERR_FILENO) != 0);
  progress_ = &progress;

  while (state_.step < last_step) {
    const int64_t step = state_.step;
    auto start = std::chrono::steady_clock::now();
    const int64_t sequences = batch_sequences_at(tc, config_.batch_ramp, state_.tokens_seen);
    const int64_t micro_batches = sequences / mb;
    const LossWeights weights{schedule_value(tc.mtp_weight, step), tc.balance_alpha};

    FRUGAL_CHECK(!expert_parallel() || micro_batches % dp == 0,
                 "step {}: {} micro-batches do not split evenly over {} data-parallel ranks, which "
                 "expert parallelism needs (choose train.batch_sequences and the batch ramp as "
                 "multiples of train.micro_batch * {})",
                 step + 1, micro_batches, dp, dp);

    engine_->zero_grad();
    // [micro-batch][total, main, mtp, balance]: each rank fills its own micro-batches.
    std::vector<double> parts(static_cast<size_t>(micro_batches * 4), 0.0);
    auto record_losses = [&parts](int64_t m, const Losses& l) {
      parts[m * 4 + 0] = l.total;
      parts[m * 4 + 1] = l.main;
      parts[m * 4 + 2] = l.mtp;
      parts[m * 4 + 3] = l.balance;
    };
    if (engine_->runs_whole_step()) {
      // The pipeline: every micro-batch of the step goes to the engine at once, the same on every
      // rank; the engine plays its dp rank's share (d, d + dp, ...) and returns zero losses for
      // the others, so the sum over dp below is the step's.
      std::vector<int32_t> step_tokens(micro_batches * mb * seq), step_targets(step_tokens.size());
      for (int64_t m = 0; m < micro_batches; ++m)
        train_.next_batch(step_tokens.data() + m * mb * seq, step_targets.data() + m * mb * seq,
                          mb, seq);
      const std::vector<Losses> losses = engine_->forward_backward_step(
          step_tokens.data(), step_targets.data(), micro_batches, mb, seq, weights);
      for (int64_t m = 0; m < micro_batches; ++m) record_losses(m, losses[m]);
    } else {
      // This rank runs m = dp_rank, dp_rank + dp, ...; its last one may start the gradient sum
      // over the ranks during its backward when every rank has one (set_last_micro_batch).
      const int64_t last_mine =
          micro_batches > dp_rank() ? dp_rank() + (micro_batches - 1 - dp_rank()) / dp * dp : -1;
      const bool every_rank_runs_one = micro_batches >= dp;
      for (int64_t m = 0; m < micro_batches; ++m) {
        train_.next_batch(tokens.data(), targets.data(), mb, seq);
        if (m % dp != dp_rank()) continue;
        engine_->set_last_micro_batch(every_rank_runs_one && m == last_mine);
        record_losses(m, engine_->forward_backward(tokens.data(), targets.data(), mb, seq, weights,
                                                   1.0 / static_cast<double>(micro_batches)));
      }
    }
    if (mesh_) mesh_->dp().all_reduce_sum(parts.data(), micro_batches * 4, CommType::F64);
    Losses sum;
    for (int64_t m = 0; m < micro_batches; ++m) {
      sum.total += parts[m * 4 + 0] / micro_batches;
      sum.main += parts[m * 4 + 1] / micro_batches;
      sum.mtp += parts[m * 4 + 2] / micro_batches;
      sum.balance += parts[m * 4 + 3] / micro_batches;
    }
    const double lr = learning_rate(config_.optim, config_.schedule, step);
    const OptimizerStepInfo info = engine_->optimizer_step(lr);
    auto load = engine_->expert_load();  // read before the bias update resets the counts
    // A skipped step leaves the whole model as it was: the routing biases stay too (gamma 0 only
    // restarts the load counters).
    engine_->update_balance_bias(info.skipped ? 0.0 : schedule_value(tc.bias_update_speed, step));
    engine_->synchronize();
    state_.step += 1;
    state_.tokens_seen += sequences * seq;
    state_.train_data = train_.state();

    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double tok_s = static_cast<double>(sequences * seq) / seconds;
    const int64_t memory = engine_->peak_memory_bytes();
    if (summary.steps_done == 0) summary.first_loss = sum.main;
    summary.last_loss = sum.main;
    summary.steps_done += 1;
    if (info.skipped) summary.skipped_steps += 1;

    nlohmann::json record = {{"step", state_.step},       {"loss", sum.total},
                             {"loss_main", sum.main},     {"loss_mtp", sum.mtp},
                             {"loss_balance", sum.balance}, {"grad_norm", info.grad_norm},
                             {"lr", lr},                  {"tokens", state_.tokens_seen},
                             {"step_ms", seconds * 1e3},  {"tokens_per_s", tok_s},
                             {"skipped", info.skipped},   {"peak_memory_bytes", memory}};
    // MFU as the step line computes it; null when the hardware peak is unknown.
    record["mfu"] = peak_flops > 0 ? nlohmann::json(tok_s * train_flops_per_token / peak_flops)
                                   : nlohmann::json(nullptr);
    nlohmann::json load_json = nlohmann::json::object();
    for (auto& l : load) load_json[l.layer] = l.max_over_mean;
    record["expert_load_max_over_mean"] = load_json;

    if (info.skipped)
      log(fmt::format("step {}: non-finite gradient norm, update skipped", state_.step));
    // A stop request (Ctrl-C) ends the run after this step, with a checkpoint like any last step.
    bool stopping = stop_flag_ != nullptr && stop_flag_->load();
    if (mesh_) {  // every rank stops after the same step
      int32_t requests = stopping ? 1 : 0;
      mesh_->world().all_reduce_sum(&requests, 1, CommType::I32);
      stopping = requests > 0;
    }
    const bool last = state_.step == last_step || stopping;
    if (state_.step % std::max<int64_t>(tc.log_every, 1) == 0 || last || state_.step == 1) {
      StepStats stats{state_.step, tc.steps, sum.main, info.grad_norm,         lr,
                      seconds,     tok_s,    train_flops_per_token, peak_flops, memory};
      log(format_step_line(stats));
    }
    if (tc.eval_every > 0 && val_ && (state_.step % tc.eval_every == 0 || last)) {
      summary.last_val_loss = validation_loss();
      record["val_loss"] = summary.last_val_loss;
      std::string loads;
      for (auto& l : load) loads += fmt::format(" {} {:.2f}", l.layer, l.max_over_mean);
      log(fmt::format("eval step {} | val loss {:.4f} | mtp loss {:.4f} | expert load max/mean:{}",
                      state_.step, summary.last_val_loss, sum.mtp, loads));
    }
    if (writer) metrics_.write(record);
    progress.update(state_.step);
    if ((tc.save_every > 0 && state_.step % tc.save_every == 0) || last) {
      summary.checkpoint = save();
      if (last) log(fmt::format("saved {}", summary.checkpoint));
    }
    if (stopping) {
      summary.interrupted = state_.step < last_step;
      break;
    }
  }
  if (writer) metrics_.close();
  progress.finish();
  progress_ = nullptr;
  return summary;
}

}  // namespace frugal
