// The training loop: stopping after 3 steps, saving, and resuming in a new Trainer continues
// bitwise identically to 6 uninterrupted steps (parameters, routing biases, optimizer moments,
// data position, losses, the checkpoint files); the batch-size ramp; a non-finite gradient skips
// the step and logs it; validation loss is deterministic. Tiny model (dense + MoE layers, MTP),
// seq_len 16, two micro-batches per step, a synthetic byte corpus.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "test_util.h"
#include "train/train_test_util.h"
#include "core/rng.h"
#include "data/text_source.h"
#include "io/config_io.h"
#include "train/schedule.h"
#include "train/trainer.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;

using ::frugal::testing::read_bytes;
using ::frugal::testing::synthetic_tokens;

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  return ::frugal::testing::read_metrics_file(path);
}



Config small_config(const std::string& out_dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides = {
      "train.seq_len=16",
      "train.micro_batch=2",
      "train.batch_sequences=4",  // two micro-batches: gradient accumulation
      "train.steps=6",
      "train.eval_every=2",
      "train.eval_batches=2",
      "train.save_every=0",
      "train.log_every=1",
      "train.threads=1",  // the test machine is shared; results do not depend on it
      "train.bias_update_speed=[[0, 1e-2], [4, 5e-3]]",  // changes after the resume point
      "train.mtp_weight=[[0, 0.3], [2, 0.1]]",
      "schedule.warmup_steps=2",
      "schedule.decay_start=3",
      "schedule.decay_end=6",
      "train.out_dir=" + out_dir,
  };
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml", overrides);
}

// A training and a validation source over fixed synthetic corpora.
struct Sources {
  explicit Sources(uint64_t seed)
      : train(synthetic_tokens(3000, 11), seed, 0, 1, ByteTokenizer::kVocabSize, "train"),
        val(synthetic_tokens(600, 12), seed, 0, 1, ByteTokenizer::kVocabSize, "validation") {}
  TextDataSource train, val;
};

void expect_same_params(Transformer<float>& a, Transformer<float>& b) {
  ASSERT_EQ(a.params().size(), b.params().size());
  int64_t buffers = 0;
  for (size_t i = 0; i < a.params().size(); ++i) {
    const auto& pa = *a.params().all()[i];
    const auto& pb = *b.params().all()[i];
    ASSERT_EQ(pa.name, pb.name);
    ASSERT_EQ(pa.value.size(), pb.value.size());
    EXPECT_EQ(std::memcmp(pa.value.data(), pb.value.data(), pa.value.size() * sizeof(float)), 0)
        << pa.name << " differs";
    if (!pa.trainable) ++buffers;
  }
  EXPECT_GE(buffers, 2);  // the routing biases (MoE layer and MTP layer) were compared too
}

void expect_same_optimizer(const AdamW<float>& a, const AdamW<float>& b) {
  EXPECT_EQ(a.step_count(), b.step_count());
  ASSERT_EQ(a.state().size(), b.state().size());
  for (size_t i = 0; i < a.state().size(); ++i) {
    const auto& sa = a.state()[i];
    const auto& sb = b.state()[i];
    ASSERT_EQ(sa.name, sb.name);
    EXPECT_EQ(std::memcmp(sa.m.data(), sb.m.data(), sa.m.size() * sizeof(float)), 0) << sa.name;
    EXPECT_EQ(std::memcmp(sa.v.data(), sb.v.data(), sa.v.size() * sizeof(float)), 0) << sa.name;
  }
}

TEST(Trainer, ResumeContinuesBitwiseIdentically) {
  TempDir dir;
  const std::string straight_dir = dir.sub("straight"), split_dir = dir.sub("split");

  // Six steps in one go.
  Sources straight_data(1234);
  Trainer straight(small_config(straight_dir), straight_data.train, &straight_data.val, true);
  TrainSummary full = straight.run();
  EXPECT_EQ(full.steps_done, 6);

  // Three steps, a checkpoint, then a fresh process-like restart: new sources, new Trainer.
  {
    Sources data(1234);
    Trainer first(small_config(split_dir), data.train, &data.val, true);
    TrainSummary part = first.run(3);
    EXPECT_EQ(part.steps_done, 3);
    EXPECT_EQ(first.state().step, 3);
    EXPECT_EQ(fs::path(part.checkpoint).filename(), "checkpoint-00000003");
  }
  Sources resumed_data(1234);
  Trainer resumed(small_config(split_dir), resumed_data.train, &resumed_data.val, true);
  resumed.resume(resolve_checkpoint(split_dir));
  EXPECT_EQ(resumed.state().step, 3);
  TrainSummary rest = resumed.run();
  EXPECT_EQ(rest.steps_done, 3);

  expect_same_params(straight.model(), resumed.model());
  expect_same_optimizer(straight.optimizer(), resumed.optimizer());
  EXPECT_EQ(straight.state().step, resumed.state().step);
  EXPECT_EQ(straight.state().tokens_seen, resumed.state().tokens_seen);
  EXPECT_EQ(straight.state().train_data, resumed.state().train_data);
  EXPECT_EQ(straight_data.train.batch_counter(), resumed_data.train.batch_counter());
  EXPECT_EQ(straight_data.train.batch_counter(), 12);  // 6 steps x 2 micro-batches
  EXPECT_EQ(full.last_loss, rest.last_loss);
  EXPECT_EQ(full.last_val_loss, rest.last_val_loss);
  EXPECT_TRUE(std::isfinite(full.last_loss));
  EXPECT_LT(full.last_loss, full.first_loss);

  // The final checkpoints hold the same bytes (frugal.toml differs only in train.out_dir).
  const std::string a = straight_dir + "/checkpoint-00000006", b = split_dir + "/checkpoint-00000006";
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json",
                           "config.json"})
    EXPECT_TRUE(read_bytes(a + "/" + file) == read_bytes(b + "/" + file)) << file << " differs";

  // The metrics of the split run (appended after the resume) match step for step.
  auto m_full = read_metrics(straight_dir + "/metrics.jsonl");
  auto m_split = read_metrics(split_dir + "/metrics.jsonl");
  ASSERT_EQ(m_full.size(), 6u);
  ASSERT_EQ(m_split.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(m_split[i]["step"], static_cast<int64_t>(i + 1));
    EXPECT_EQ(m_full[i]["loss"], m_split[i]["loss"]) << "step " << i + 1;
    EXPECT_EQ(m_full[i]["grad_norm"], m_split[i]["grad_norm"]) << "step " << i + 1;
    EXPECT_EQ(m_full[i]["lr"], m_split[i]["lr"]) << "step " << i + 1;
  }
}

TEST(Trainer, ResumeDropsMetricsOfStepsAfterTheCheckpoint) {
  TempDir dir;
  const std::string out = dir.sub("run");
  {
    Sources data(1234);
    Trainer t(small_config(out, {"train.eval_every=0"}), data.train, nullptr, true);
    t.run(2);
  }
  // A crash after step 4 left records of steps 3 and 4 but no checkpoint past step 2.
  {
    std::ofstream add(out + "/metrics.jsonl", std::ios::app);
    add << R"({"step": 3, "loss": 99})" << "\n" << R"({"step": 4, "loss": 99})" << "\n";
  }
  Sources data(1234);
  Trainer t(small_config(out, {"train.eval_every=0", "train.steps=3"}), data.train, nullptr, true);
  t.resume(resolve_checkpoint(out));
  t.run();
  auto records = read_metrics(out + "/metrics.jsonl");
  ASSERT_EQ(records.size(), 3u);
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i]["step"], static_cast<int64_t>(i + 1));
    EXPECT_NE(records[i]["loss"], 99);
  }
}

TEST(Trainer, ResumeRefusesADifferentModel) {
  TempDir dir;
  const std::string out = dir.sub("run");
  {
    Sources data(1234);
    Trainer t(small_config(out, {"train.eval_every=0"}), data.train, nullptr, true);
    t.run(1);
  }
  Sources data(1234);
  // Same shapes, different model: only the config comparison can notice.
  Trainer t(small_config(out, {"model.rope_theta=500"}), data.train, nullptr, true);
  try {
    t.resume(resolve_checkpoint(out));
    FAIL() << "resume accepted a different model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_theta"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checkpoint-00000001"), std::string::npos) << e.what();
  }
  // A different seed changes the data stream: the data source refuses.
  Sources other(99);
  Trainer u(small_config(out, {"train.seed=99"}), other.train, nullptr, true);
  EXPECT_THROW(u.resume(resolve_checkpoint(out)), Error);
}

TEST(Trainer, BatchRampGrowsTheSequencesPerStep) {
  TempDir dir;
  // From 2 to 6 sequences over 192 tokens of 16-token sequences, in whole micro-batches of 2.
  Config config = small_config(dir.sub("run"), {"train.batch_sequences=6", "train.eval_every=0",
                                                "batch_ramp.start_sequences=2",
                                                "batch_ramp.ramp_tokens=192"});
  Sources data(1234);
  Trainer t(config, data.train, nullptr, true);
  t.run();
  auto records = read_metrics(dir.sub("run") + "/metrics.jsonl");
  ASSERT_EQ(records.size(), 6u);
  // tokens seen 0, 32, 64 -> 2 + 4*seen/192 = 2, 2.67, 3.33 -> 2; 96, 160 -> 4, 5.33 -> 4; 224 -> 6.
  const int64_t expected[] = {2, 2, 2, 4, 4, 6};
  int64_t previous_tokens = 0, micro_batches = 0;
  for (size_t i = 0; i < 6; ++i) {
    const int64_t tokens = records[i]["tokens"].get<int64_t>();
    EXPECT_EQ(tokens - previous_tokens, expected[i] * 16) << "step " << i + 1;
    micro_batches += expected[i] / 2;
    previous_tokens = tokens;
  }
  EXPECT_EQ(t.state().tokens_seen, 20 * 16);
  EXPECT_EQ(data.train.batch_counter(), micro_batches);
}

TEST(Trainer, NonFiniteGradientSkipsTheStepAndLogsIt) {
  TempDir dir;
  Sources data(1234);
  Trainer t(small_config(dir.sub("run"), {"train.eval_every=0", "train.steps=2"}), data.train,
            nullptr, /*quiet=*/false);
  ::testing::internal::CaptureStdout();
  t.run(1);
  ::testing::internal::GetCapturedStdout();

  // Poison one head weight: every logit row holds a NaN, so every gradient does.
  t.model().params().get("lm_head.weight").value[0] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> before;
  for (auto& p : t.model().params().all()) before.push_back(p->value);
  const int64_t updates = t.optimizer().step_count();
  std::vector<std::vector<float>> moments_before;
  for (auto& s : t.optimizer().state()) moments_before.push_back(s.m);

  ::testing::internal::CaptureStdout();
  TrainSummary summary = t.run();
  const std::string output = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(summary.steps_done, 1);
  EXPECT_EQ(summary.skipped_steps, 1);
  EXPECT_NE(output.find("step 2: non-finite gradient norm, update skipped"), std::string::npos)
      << output;
  EXPECT_EQ(t.state().step, 2);
  EXPECT_EQ(t.optimizer().step_count(), updates);
  for (size_t i = 0; i < before.size(); ++i) {
    const auto& p = *t.model().params().all()[i];
    EXPECT_EQ(std::memcmp(before[i].data(), p.value.data(), before[i].size() * sizeof(float)), 0)
        << p.name << " changed in a skipped step";
  }
  for (size_t i = 0; i < moments_before.size(); ++i)
    EXPECT_EQ(moments_before[i], t.optimizer().state()[i].m);
  auto records = read_metrics(dir.sub("run") + "/metrics.jsonl");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_FALSE(records[0]["skipped"].get<bool>());
  EXPECT_TRUE(records[1]["skipped"].get<bool>());
}

TEST(Trainer, StopRequestSavesAfterTheCurrentStep) {
  TempDir dir;
  Sources data(1234);
  Trainer t(small_config(dir.sub("run"), {"train.eval_every=0"}), data.train, nullptr, true);
  std::atomic<bool> stop{true};
  t.set_stop_flag(&stop);
  TrainSummary summary = t.run();
  EXPECT_TRUE(summary.interrupted);
  EXPECT_EQ(summary.steps_done, 1);
  EXPECT_EQ(fs::path(summary.checkpoint).filename(), "checkpoint-00000001");
  EXPECT_EQ(resolve_checkpoint(dir.sub("run")), summary.checkpoint);
  // Without the request the run goes on to train.steps; a request at the last step is no
  // interruption.
  stop = false;
  EXPECT_EQ(t.run(4).steps_done, 4);
  stop = true;
  summary = t.run();
  EXPECT_FALSE(summary.interrupted);
  EXPECT_EQ(t.state().step, 6);
}

TEST(Trainer, MetricsCarryMemoryAndMfu) {
  TempDir dir;
  Sources data(1234);
  Trainer t(small_config(dir.sub("run"), {"train.eval_every=0", "train.steps=2"}), data.train,
            nullptr, true);
  t.run();
  const double flops = 3.0 * t.engine().flops_per_token(16), peak = t.engine().peak_flops();
  auto records = read_metrics(dir.sub("run") + "/metrics.jsonl");
  ASSERT_EQ(records.size(), 2u);
  for (const auto& r : records) {
    EXPECT_GT(r["peak_memory_bytes"].get<int64_t>(), 0);  // the process RSS on the CPU
    if (peak > 0) {
      EXPECT_NEAR(r["mfu"].get<double>(), r["tokens_per_s"].get<double>() * flops / peak, 1e-12);
    } else {
      EXPECT_TRUE(r["mfu"].is_null());
    }
  }
}

TEST(Trainer, ValidationLossIsDeterministic) {
  TempDir dir;
  Sources data(1234);
  Trainer t(small_config(dir.sub("run"), {"train.eval_every=0"}), data.train, &data.val, true);
  const double first = t.validation_loss();
  EXPECT_TRUE(std::isfinite(first));
  EXPECT_EQ(first, t.validation_loss());
  t.run(2);
  const double trained = t.validation_loss();
  EXPECT_NE(trained, first);  // it measures the model, not a constant
  EXPECT_EQ(trained, t.validation_loss());
  EXPECT_EQ(data.val.batch_counter(), 2);  // every call re-reads the same eval_batches batches
  // Without a validation source there is no validation loss.
  Trainer no_val(small_config(dir.sub("other"), {"train.eval_every=0"}), data.train, nullptr, true);
  EXPECT_EQ(no_val.validation_loss(), -1);
}

}  // namespace
}  // namespace frugal
