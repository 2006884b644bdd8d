// Validation of a whole Config: the model (model/config.cc), then the training, optimizer,
// schedule, batch-ramp, data and generation settings. Each failure names its key.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "io/config_io.h"
#include "parallel/schedule.h"
#include "parallel/stage_layout.h"
#include "train/recipe.h"

namespace frugal {
namespace {

void check_finite(double value, const char* key) {
  FRUGAL_CHECK(std::isfinite(value), "{} = {} must be a finite number", key, value);
}

void check_at_least(double value, double minimum, const char* key) {
  check_finite(value, key);
  FRUGAL_CHECK(value >= minimum, "{} = {} must be >= {}", key, value, minimum);
}

void check_positive(double value, const char* key) {
  check_finite(value, key);
  FRUGAL_CHECK(value > 0.0, "{} = {} must be positive", key, value);
}

// Piecewise schedules start at step 0, have increasing starts and non-negative values.
void check_step_schedule(const std::vector<StepValue>& schedule, const char* key) {
  FRUGAL_CHECK(!schedule.empty(), "{} is empty (give at least [[0, value]])", key);
  FRUGAL_CHECK(schedule.front().start == 0, "{} must start at step 0, not {}", key,
               schedule.front().start);
  for (size_t i = 0; i < schedule.size(); ++i) {
    FRUGAL_CHECK(std::isfinite(schedule[i].value) && schedule[i].value >= 0.0,
                 "{}[{}] value {} must be a finite number >= 0", key, i, schedule[i].value);
    FRUGAL_CHECK(i == 0 || schedule[i].start > schedule[i - 1].start,
                 "{}[{}] starts at step {}, not after the previous entry's {}", key, i,
                 schedule[i].start, schedule[i - 1].start);
  }
}

void validate_train(const TrainConfig& t, const ModelConfig& m) {
  FRUGAL_CHECK(t.seq_len >= 2, "train.seq_len = {} must be >= 2", t.seq_len);
  FRUGAL_CHECK(t.seq_len <= m.max_position_embeddings,
               "train.seq_len = {} exceeds model.max_position_embeddings = {}", t.seq_len,
               m.max_position_embeddings);
  FRUGAL_CHECK(t.micro_batch >= 1, "train.micro_batch = {} must be >= 1", t.micro_batch);
  FRUGAL_CHECK(t.batch_sequences >= 1, "train.batch_sequences = {} must be >= 1",
               t.batch_sequences);
  FRUGAL_CHECK(t.batch_sequences % t.micro_batch == 0,
               "train.batch_sequences = {} is not a multiple of train.micro_batch = {}",
               t.batch_sequences, t.micro_batch);
  FRUGAL_CHECK(t.steps >= 0, "train.steps = {} must be >= 0", t.steps);
  check_positive(t.init_std, "train.init_std");
  check_step_schedule(t.bias_update_speed, "train.bias_update_speed");
  check_step_schedule(t.mtp_weight, "train.mtp_weight");
  check_at_least(t.balance_alpha, 0.0, "train.balance_alpha");
  FRUGAL_CHECK(t.log_every >= 1, "train.log_every = {} must be >= 1", t.log_every);
  FRUGAL_CHECK(t.eval_every >= 0, "train.eval_every = {} must be >= 0 (0 disables)", t.eval_every);
  FRUGAL_CHECK(t.eval_every == 0 || t.eval_batches >= 1,
               "train.eval_batches = {} must be >= 1 when train.eval_every > 0", t.eval_batches);
  FRUGAL_CHECK(t.save_every >= 0, "train.save_every = {} must be >= 0 (0: only at the end)",
               t.save_every);
  FRUGAL_CHECK(!t.out_dir.empty(), "train.out_dir must not be empty");
  // Both are valid in every build: a CPU-only build still reads a GPU run's checkpoint. Whether
  // this machine can train with them is decided when training starts (train/recipe.h).
  parse_recipe(t.precision);
  parse_device(t.device);
  FRUGAL_CHECK(t.threads >= 0, "train.threads = {} must be >= 0 (0: all cores)", t.threads);
  FRUGAL_CHECK(t.pp >= 1, "train.pp = {} must be >= 1", t.pp);
  pipeline::parse_schedule_kind(t.pp_schedule, "train.pp_schedule");
  parse_stage_layers(t.pp_stage_layers, "train.pp_stage_layers");  // its fit: validate_pipeline
  FRUGAL_CHECK(t.ep >= 1, "train.ep = {} must be >= 1", t.ep);
  FRUGAL_CHECK(t.ep == 1 || (m.n_routed_experts > 0 && m.n_routed_experts % t.ep == 0),
               "train.ep = {} must divide model.n_routed_experts = {} (every expert-parallel rank "
               "holds the same number of experts)",
               t.ep, m.n_routed_experts);
  FRUGAL_CHECK(t.seed <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
               "train.seed = {} must fit a signed 64-bit integer", t.seed);
}

// train.pp > 1: the pipeline trains with a fixed micro-batch count that its schedule must accept.
void validate_pipeline(const Config& config) {
  const TrainConfig& t = config.train;
  if (t.pp == 1) return;
  const pipeline::ScheduleKind kind = pipeline::parse_schedule_kind(t.pp_schedule, "train.pp_schedule");
  FRUGAL_CHECK(config.batch_ramp.ramp_tokens <= 0,
               "train.pp = {}: the pipeline runs a fixed number of micro-batches per step, so "
               "batch_ramp.ramp_tokens must be 0 (no batch ramp)",
               t.pp);
  const int64_t micro_batches = t.batch_sequences / t.micro_batch;
  try {
    pipeline::build_schedule(kind, pipeline_stage_count(kind, static_cast<int>(t.pp)),
                             static_cast<int>(micro_batches));
  } catch (const Error& e) {
    fail("train.pp_schedule = \"{}\" with train.pp = {} and {} micro-batches per step "
         "(train.batch_sequences / train.micro_batch): {}",
         t.pp_schedule, t.pp, micro_batches, e.what());
  }
  // The stage split must fit the stages (a list: count, sum, no empty middle stage; "even": one
  // layer per stage at least). With train.pp = 1 the setting is unused (checkpoints keep it).
  const int stages = pipeline::pipeline_stage_count(kind, static_cast<int>(t.pp));
  try {
    resolve_stage_layout(t.pp_stage_layers, config.model, kind, stages, t.seq_len);
  } catch (const Error& e) {
    fail("train.pp_stage_layers with train.pp = {} and train.pp_schedule = \"{}\" ({} stages): {}",
         t.pp, t.pp_schedule, stages, e.what());
  }
}

void validate_optim(const OptimConfig& o) {
  check_at_least(o.lr, 0.0, "optim.lr");
  check_at_least(o.beta1, 0.0, "optim.beta1");
  FRUGAL_CHECK(o.beta1 < 1.0, "optim.beta1 = {} must be < 1", o.beta1);
  check_at_least(o.beta2, 0.0, "optim.beta2");
  FRUGAL_CHECK(o.beta2 < 1.0, "optim.beta2 = {} must be < 1", o.beta2);
  check_positive(o.eps, "optim.eps");
  check_at_least(o.weight_decay, 0.0, "optim.weight_decay");
  check_at_least(o.grad_clip, 0.0, "optim.grad_clip");
}

void validate_schedule(const LrSchedule& s) {
  FRUGAL_CHECK(s.warmup_steps >= 0, "schedule.warmup_steps = {} must be >= 0", s.warmup_steps);
  check_at_least(s.min_lr, 0.0, "schedule.min_lr");
  check_at_least(s.final_lr, 0.0, "schedule.final_lr");
  if (s.decay_start == -1) {
    FRUGAL_CHECK(s.decay_end == -1,
                 "schedule.decay_end = {} is set but schedule.decay_start is not (-1)", s.decay_end);
  } else {
    FRUGAL_CHECK(s.decay_start >= s.warmup_steps,
                 "schedule.decay_start = {} is before the end of schedule.warmup_steps = {}",
                 s.decay_start, s.warmup_steps);
    FRUGAL_CHECK(s.decay_end >= s.decay_start,
                 "schedule.decay_end = {} is before schedule.decay_start = {}", s.decay_end,
                 s.decay_start);
  }
  if (s.final_start != -1) {
    FRUGAL_CHECK(s.final_start >= s.warmup_steps,
                 "schedule.final_start = {} is before the end of schedule.warmup_steps = {}",
                 s.final_start, s.warmup_steps);
    FRUGAL_CHECK(s.decay_end == -1 || s.final_start >= s.decay_end,
                 "schedule.final_start = {} is before schedule.decay_end = {}", s.final_start,
                 s.decay_end);
  }
}

void validate_batch_ramp(const BatchRamp& r, const TrainConfig& t) {
  FRUGAL_CHECK(r.ramp_tokens >= 0, "batch_ramp.ramp_tokens = {} must be >= 0 (0 disables)",
               r.ramp_tokens);
  FRUGAL_CHECK(r.start_sequences >= 0, "batch_ramp.start_sequences = {} must be >= 0",
               r.start_sequences);
  if (r.ramp_tokens == 0) return;
  FRUGAL_CHECK(r.start_sequences >= 1,
               "batch_ramp.start_sequences = {} must be >= 1 when batch_ramp.ramp_tokens > 0",
               r.start_sequences);
  FRUGAL_CHECK(r.start_sequences <= t.batch_sequences,
               "batch_ramp.start_sequences = {} exceeds train.batch_sequences = {}",
               r.start_sequences, t.batch_sequences);
}

void validate_data(const DataConfig& d, const ModelConfig& m) {
  check_at_least(d.val_fraction, 0.0, "data.val_fraction");
  FRUGAL_CHECK(d.val_fraction < 1.0, "data.val_fraction = {} must be < 1", d.val_fraction);
  FRUGAL_CHECK(!d.tokenizer.empty(), "data.tokenizer must not be empty");
  FRUGAL_CHECK(d.fim_rate >= 0.0 && d.fim_rate <= 1.0, "data.fim_rate = {} must be in [0, 1]",
               d.fim_rate);
  FRUGAL_CHECK(d.tokenizer != "bytes" || m.vocab_size >= 256,
               "model.vocab_size = {} is too small for data.tokenizer = \"bytes\" (256 byte ids "
               "plus special tokens)",
               m.vocab_size);
}

void validate_generate(const GenerateConfig& g) {
  FRUGAL_CHECK(g.max_new_tokens >= 0, "generate.max_new_tokens = {} must be >= 0",
               g.max_new_tokens);
  check_at_least(g.temperature, 0.0, "generate.temperature");
  FRUGAL_CHECK(g.top_k >= 0, "generate.top_k = {} must be >= 0 (0 = off)", g.top_k);
  check_positive(g.top_p, "generate.top_p");
  FRUGAL_CHECK(g.top_p <= 1.0, "generate.top_p = {} must be <= 1", g.top_p);
  FRUGAL_CHECK(g.seed <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
               "generate.seed = {} must fit a signed 64-bit integer", g.seed);
}

}  // namespace

void validate(const Config& config) {
  validate(config.model);
  validate_train(config.train, config.model);
  validate_optim(config.optim);
  validate_schedule(config.schedule);
  validate_batch_ramp(config.batch_ramp, config.train);
  validate_pipeline(config);
  validate_data(config.data, config.model);
  validate_generate(config.generate);
}

}  // namespace frugal
