// Checkpoint directories: the layout (Hugging Face tensor names with MTP as layer
// num_hidden_layers, config.json and frugal.toml that read back to the same config, optimizer
// moments, trainer state, `latest`), an exact round trip, keep=N pruning, failed saves that keep
// the previous checkpoint and leave no temporary directory, resolve_checkpoint, and clear errors
// for truncated or mismatched files.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "core/rng.h"
#include "io/config_io.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;

using ::frugal::testing::read_bytes;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

Config tiny_config(const std::string& out_dir, std::vector<std::string> extra = {}) {
  extra.push_back("train.out_dir=" + out_dir);
  extra.push_back("data.train_path=corpus.txt");
  return load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml", extra);
}

// A model, an optimizer that has taken two steps (nonzero moments) and a trainer state.
struct TrainedState {
  explicit TrainedState(const Config& config, uint64_t seed = 5)
      : model(config.model), optimizer(config.optim, model.params()) {
    model.init_weights(seed, 0.02);
    for (int step = 0; step < 2; ++step) {
      for (auto& p : model.params().all())
        for (size_t i = 0; i < p->grad.size(); ++i)
          p->grad[i] = static_cast<float>(RandomStream(seed, step).normal(i) * 0.01);
      optimizer.step(model.params(), 1e-3);
    }
    // Routing biases as the balancing rule leaves them: nonzero.
    for (auto& p : model.params().all())
      if (!p->trainable)
        for (size_t i = 0; i < p->value.size(); ++i) p->value[i] = 0.001f * static_cast<float>(i);
    state.step = 7;
    state.tokens_seen = 7 * 512;
    state.train_data = {{"kind", "text"}, {"batch_counter", 14}};
  }
  Transformer<float> model;
  AdamW<float> optimizer;
  TrainerState state;
};

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, LayoutAndContents) {
  TempDir dir;
  const std::string out = dir.sub("run");
  const Config config = tiny_config(out);
  TrainedState run(config);
  const std::string saved = save_checkpoint(out, config, run.model, run.optimizer, run.state);
  EXPECT_EQ(saved, out + "/checkpoint-00000007");
  EXPECT_EQ(listing(out), (std::vector<std::string>{"checkpoint-00000007", "latest"}));
  EXPECT_EQ(read_bytes(out + "/latest"), "checkpoint-00000007\n");
  EXPECT_EQ(listing(saved), (std::vector<std::string>{"config.json", "frugal.toml",
                                                      "model.safetensors", "optimizer.safetensors",
                                                      "trainer_state.json"}));

  // Weights: every parameter under its Hugging Face name, FP32, exact.
  SafetensorsFile weights = SafetensorsFile::open(saved + "/model.safetensors");
  EXPECT_EQ(weights.names().size(), run.model.params().size());
  for (const char* name :
       {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.experts.7.down_proj.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.2.eh_proj.weight",
        "model.layers.2.enorm.weight", "model.layers.2.hnorm.weight",
        "model.layers.2.shared_head.norm.weight", "model.layers.2.mlp.gate.e_score_correction_bias"})
    EXPECT_TRUE(weights.contains(name)) << name;
  EXPECT_EQ(weights.info("model.layers.2.eh_proj.weight").shape,
            (std::vector<int64_t>{config.model.hidden_size, 2 * config.model.hidden_size}));
  for (auto& p : run.model.params().all()) {
    EXPECT_EQ(weights.info(p->name).dtype, DType::F32) << p->name;
    EXPECT_EQ(weights.read_as<float>(p->name), p->value) << p->name;
  }

  // Configs read back unchanged.
  EXPECT_EQ(load_hf_config(saved + "/config.json"), config.model);
  EXPECT_EQ(load_config(saved + "/frugal.toml"), config);
  EXPECT_EQ(load_checkpoint_config(saved), config);

  // Optimizer moments, one pair per trainable parameter, and the update count.
  SafetensorsFile moments = SafetensorsFile::open(saved + "/optimizer.safetensors");
  EXPECT_EQ(moments.names().size(), 2 * run.optimizer.state().size());
  EXPECT_EQ(moments.metadata().at("step_count"), "2");
  for (auto& s : run.optimizer.state()) {
    EXPECT_EQ(moments.read_as<float>(s.name + ".exp_avg"), s.m) << s.name;
    EXPECT_EQ(moments.read_as<float>(s.name + ".exp_avg_sq"), s.v) << s.name;
  }
  EXPECT_FALSE(moments.contains("model.layers.1.mlp.gate.e_score_correction_bias.exp_avg"));

  auto trainer = nlohmann::json::parse(read_bytes(saved + "/trainer_state.json"));
  EXPECT_EQ(trainer["step"], 7);
  EXPECT_EQ(trainer["tokens_seen"], 7 * 512);
  EXPECT_EQ(trainer["train_data"], run.state.train_data);
}

TEST(Checkpoint, LoadRestoresEverythingExactly) {
  TempDir dir;
  const std::string out = dir.sub("run");
  const Config config = tiny_config(out);
  TrainedState run(config);
  const std::string saved = save_checkpoint(out, config, run.model, run.optimizer, run.state);

  TrainedState other(config, /*seed=*/99);  // different weights, moments and state
  TrainerState state;
  load_checkpoint_model(saved, other.model);
  load_checkpoint_training(saved, other.optimizer, state);
  for (size_t i = 0; i < run.model.params().size(); ++i)
    EXPECT_EQ(run.model.params().all()[i]->value, other.model.params().all()[i]->value)
        << run.model.params().all()[i]->name;
  EXPECT_EQ(other.optimizer.step_count(), run.optimizer.step_count());
  for (size_t i = 0; i < run.optimizer.state().size(); ++i) {
    EXPECT_EQ(run.optimizer.state()[i].m, other.optimizer.state()[i].m);
    EXPECT_EQ(run.optimizer.state()[i].v, other.optimizer.state()[i].v);
  }
  EXPECT_EQ(state.step, 7);
  EXPECT_EQ(state.tokens_seen, 7 * 512);
  EXPECT_EQ(state.train_data, run.state.train_data);
}

TEST(Checkpoint, KeepsTheNewestTwo) {
  TempDir dir;
  const std::string out = dir.sub("run");
  const Config config = tiny_config(out);
  TrainedState run(config);
  EXPECT_FALSE(has_checkpoint(out));
  for (int64_t step : {1, 2, 3, 10}) {
    run.state.step = step;
    save_checkpoint(out, config, run.model, run.optimizer, run.state, /*keep=*/2);
  }
  EXPECT_TRUE(has_checkpoint(out));
  EXPECT_EQ(listing(out),
            (std::vector<std::string>{"checkpoint-00000003", "checkpoint-00000010", "latest"}));
  EXPECT_EQ(resolve_checkpoint(out), out + "/checkpoint-00000010");
  // Saving the same step again replaces it whole.
  run.state.tokens_seen = 12345;
  save_checkpoint(out, config, run.model, run.optimizer, run.state, 2);
  EXPECT_EQ(listing(out),
            (std::vector<std::string>{"checkpoint-00000003", "checkpoint-00000010", "latest"}));
  TrainerState state;
  load_checkpoint_training(out + "/checkpoint-00000010", run.optimizer, state);
  EXPECT_EQ(state.tokens_seen, 12345);
  // keep = 0 keeps everything.
  run.state.step = 11;
  save_checkpoint(out, config, run.model, run.optimizer, run.state, 0);
  EXPECT_EQ(listing(out).size(), 4u);
}

// After a failed save: the previous checkpoint holds the same bytes, `latest` still names it, and
// nothing else is left in the run directory.
class FailedSave : public ::testing::Test {
 protected:
  void SetUp() override {
    out_ = dir_.sub("run");
    config_ = tiny_config(out_);
    run_ = std::make_unique<TrainedState>(config_);
    run_->state.step = 1;
    save_checkpoint(out_, config_, run_->model, run_->optimizer, run_->state);
    for (const char* f : kFiles) before_[f] = read_bytes(out_ + "/checkpoint-00000001/" + f);
    run_->state.step = 2;
  }
  void expect_previous_intact(const std::string& error) {
    EXPECT_FALSE(error.empty()) << "the save did not fail";
    EXPECT_NE(error.find(out_), std::string::npos) << error;
    EXPECT_EQ(listing(out_), (std::vector<std::string>{"checkpoint-00000001", "latest"}));
    EXPECT_EQ(read_bytes(out_ + "/latest"), "checkpoint-00000001\n");
    for (const char* f : kFiles)
      EXPECT_TRUE(read_bytes(out_ + "/checkpoint-00000001/" + f) == before_[f]) << f << " changed";
    EXPECT_EQ(resolve_checkpoint(out_), out_ + "/checkpoint-00000001");
  }

  static constexpr const char* kFiles[] = {"model.safetensors", "optimizer.safetensors",
                                           "config.json", "frugal.toml", "trainer_state.json"};
  TempDir dir_;
  std::string out_;
  Config config_;
  std::unique_ptr<TrainedState> run_;
  std::map<std::string, std::string> before_;
};

TEST_F(FailedSave, WriteErrorMidWay) {
  // A file-size limit makes the large weight file fail with EFBIG (as a full disk would), even
  // for root. The limit is lifted again before anything is checked.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 64 * 1024;  // the weights are ~900 KB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string error = error_of(
      [&] { save_checkpoint(out_, config_, run_->model, run_->optimizer, run_->state); });
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, old_handler);
  EXPECT_NE(error.find("model.safetensors"), std::string::npos) << error;
  expect_previous_intact(error);
}

TEST_F(FailedSave, ErrorAfterSomeFilesAreWritten) {
  // An optimizer of a wider model: the weights and configs are written, the moments fail.
  Config wider = config_;
  wider.model.hidden_size = 128;
  TrainedState mismatched(wider);
  const std::string error = error_of(
      [&] { save_checkpoint(out_, config_, run_->model, mismatched.optimizer, run_->state); });
  EXPECT_NE(error.find("model.embed_tokens.weight"), std::string::npos) << error;
  expect_previous_intact(error);
}

TEST_F(FailedSave, LeftoverTemporaryDirectoriesAreNotCheckpoints) {
  fs::create_directories(out_ + "/checkpoint-00000005.tmp-1");
  fs::create_directories(out_ + "/checkpoint-00000004.old");
  EXPECT_EQ(resolve_checkpoint(out_), out_ + "/checkpoint-00000001");
  run_->state.step = 2;
  save_checkpoint(out_, config_, run_->model, run_->optimizer, run_->state, 1);
  // keep = 1 pruned checkpoint 1 but counted neither leftover as a checkpoint.
  EXPECT_EQ(listing(out_), (std::vector<std::string>{"checkpoint-00000002",
                                                     "checkpoint-00000004.old",
                                                     "checkpoint-00000005.tmp-1", "latest"}));
}

TEST(Checkpoint, ResolveCheckpoint) {
  TempDir dir;
  const std::string out = dir.sub("run");
  const Config config = tiny_config(out);
  TrainedState run(config);
  const std::string saved = save_checkpoint(out, config, run.model, run.optimizer, run.state);
  EXPECT_EQ(resolve_checkpoint(out), saved);    // a run directory
  EXPECT_EQ(resolve_checkpoint(saved), saved);  // a checkpoint directory

  std::string e = error_of([&] { resolve_checkpoint(dir.sub("missing")); });
  EXPECT_NE(e.find(dir.sub("missing")), std::string::npos) << e;
  EXPECT_NE(e.find("no such"), std::string::npos) << e;

  fs::create_directories(dir.sub("empty"));
  e = error_of([&] { resolve_checkpoint(dir.sub("empty")); });
  EXPECT_NE(e.find("not a checkpoint"), std::string::npos) << e;

  write_bytes(dir.sub("file"), "x");
  e = error_of([&] { resolve_checkpoint(dir.sub("file")); });
  EXPECT_NE(e.find("not a directory"), std::string::npos) << e;

  write_bytes(out + "/latest", "checkpoint-00000099\n");
  e = error_of([&] { resolve_checkpoint(out); });
  EXPECT_NE(e.find("checkpoint-00000099"), std::string::npos) << e;

  write_bytes(out + "/latest", "../../etc\n");
  e = error_of([&] { resolve_checkpoint(out); });
  EXPECT_NE(e.find("not a checkpoint name"), std::string::npos) << e;
}

TEST(Checkpoint, DamagedFilesGiveErrorsNamingFileAndTensor) {
  TempDir dir;
  const std::string out = dir.sub("run");
  const Config config = tiny_config(out);
  TrainedState run(config);
  const std::string saved = save_checkpoint(out, config, run.model, run.optimizer, run.state);
  const std::string weights = saved + "/model.safetensors";
  const std::string good = read_bytes(weights);
  Transformer<float> model(config.model);

  // Truncated: the data section ends early.
  write_bytes(weights, good.substr(0, good.size() / 2));
  std::string e = error_of([&] { load_checkpoint_model(saved, model); });
  EXPECT_NE(e.find(weights), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers"), std::string::npos) << e;  // the first tensor past the end

  // Truncated inside the header.
  write_bytes(weights, good.substr(0, 100));
  e = error_of([&] { load_checkpoint_model(saved, model); });
  EXPECT_NE(e.find(weights), std::string::npos) << e;

  // A tensor of the wrong shape.
  {
    SafetensorsFile original = [&] {
      write_bytes(dir.sub("good.safetensors"), good);
      return SafetensorsFile::open(dir.sub("good.safetensors"));
    }();
    SafetensorsWriter writer;
    for (const std::string& name : original.names()) {
      auto values = original.read_as<float>(name);
      auto shape = original.info(name).shape;
      if (name == "model.layers.0.self_attn.o_proj.weight") {
        shape = {shape[1], shape[0] / 2};
        values.resize(static_cast<size_t>(shape[0] * shape[1]));
      }
      writer.add_converted(name, DType::F32, shape, values.data());
    }
    writer.write(weights);
  }
  e = error_of([&] { load_checkpoint_model(saved, model); });
  EXPECT_NE(e.find(weights), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.self_attn.o_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("shape"), std::string::npos) << e;

  // Optimizer state: truncated file, a bad step count, a malformed trainer state.
  const std::string moments = saved + "/optimizer.safetensors";
  const std::string good_moments = read_bytes(moments);
  write_bytes(moments, good_moments.substr(0, good_moments.size() - 16));
  TrainerState state;
  e = error_of([&] { load_checkpoint_training(saved, run.optimizer, state); });
  EXPECT_NE(e.find(moments), std::string::npos) << e;

  write_bytes(moments, good_moments);
  write_bytes(saved + "/trainer_state.json", "{\"step\": 3");
  e = error_of([&] { load_checkpoint_training(saved, run.optimizer, state); });
  EXPECT_NE(e.find("trainer_state.json"), std::string::npos) << e;

  // A checkpoint of another model: the optimizer file names tensors this one lacks.
  Config wider = config;
  wider.model.hidden_size = 128;
  TrainedState other(wider);
  e = error_of([&] { load_checkpoint_training(saved, other.optimizer, state); });
  EXPECT_NE(e.find(moments), std::string::npos) << e;
  EXPECT_NE(e.find("model.embed_tokens.weight"), std::string::npos) << e;
}

}  // namespace
}  // namespace frugal
