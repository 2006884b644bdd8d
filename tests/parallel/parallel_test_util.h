// Helpers of the multi-process training tests: a directory every rank shares, the tiny training
// config and data, one training run (single process or one rank of a mesh), and comparisons of
// checkpoints and metrics.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/text_source.h"
#include "io/config_io.h"
#include "io/safetensors.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "test_util.h"
#include "train/train_test_util.h"
#include "train/trainer.h"

namespace frugal::testing {

// A temporary directory made by rank 0 of `group` and known to all its ranks; removed by rank 0
// once every rank has left it.
class SharedTempDir {
 public:
  explicit SharedTempDir(Communicator& group) : group_(group) {
    std::string path;
    if (group.rank() == 0) {
      std::string pattern =
          (std::filesystem::temp_directory_path() / "frugal_parallel_XXXXXX").string();
      FRUGAL_CHECK(mkdtemp(pattern.data()) != nullptr, "mkdtemp {} failed", pattern);
      path = pattern;
    }
    int64_t length = static_cast<int64_t>(path.size());
    group.broadcast(&length, 1, CommType::I64, 0);
    path.resize(static_cast<size_t>(length));
    group.broadcast(path.data(), length, CommType::U8, 0);
    path_ = path;
  }
  ~SharedTempDir() {
    group_.barrier();
    std::error_code ec;
    if (group_.rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  std::string path(const std::string& name) const { return (path_ / name).string(); }

 private:
  Communicator& group_;
  std::filesystem::path path_;
};

// The tiny preset at sequence length 16, 3 steps, validation at step 2 and 3 over 3 batches (an
// uneven share for 2 and 4 ranks), one thread, a routing bias that moves fast enough to matter.
inline Config parallel_test_config(const std::string& out_dir,
                                   const std::vector<std::string>& extra) {
  std::vector<std::string> overrides = {
      "train.seq_len=16",   "train.steps=3",         "train.eval_every=2",
      "train.eval_batches=3", "train.save_every=0",  "train.log_every=1",
      "train.threads=1",    "train.bias_update_speed=[[0, 1e-2]]",
      "schedule.warmup_steps=2", "train.out_dir=" + out_dir};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml", overrides);
}

// Trains `config` on the synthetic corpus, as a single process (mesh null) or as this rank of
// `mesh`, optionally resuming a checkpoint first. Every rank of the mesh must call it.
// The synthetic training and validation corpora of the parallel tests.
struct SyntheticSources {
  explicit SyntheticSources(const Config& config)
      : train(synthetic_tokens(3000, 11), config.train.seed, 0, 1, ByteTokenizer::kVocabSize,
              "train"),
        val(synthetic_tokens(600, 12), config.train.seed, 0, 1, ByteTokenizer::kVocabSize,
            "validation") {}
  TextDataSource train, val;
};

inline TrainSummary train_run(const Config& config, const Mesh* mesh,
                              const std::string& resume_from = "") {
  SyntheticSources data(config);
  Trainer trainer(config, data.train, &data.val, /*quiet=*/true, mesh);
  if (!resume_from.empty()) trainer.resume(resume_from);
  return trainer.run();
}

// The checkpoint files a run writes besides frugal.toml (which names the run's out_dir).
inline const std::vector<std::string>& checkpoint_files() {
  static const std::vector<std::string> files = {"model.safetensors", "optimizer.safetensors",
                                                 "trainer_state.json", "config.json"};
  return files;
}

// The first file of `names` whose bytes differ between two directories ("" when none).
inline std::string first_different_file(const std::string& a, const std::string& b,
                                        const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    const std::filesystem::path pa = std::filesystem::path(a) / name, pb = std::filesystem::path(b) / name;
    if (!std::filesystem::exists(pa) || !std::filesystem::exists(pb) ||
        read_bytes(pa) != read_bytes(pb))
      return name;
  }
  return "";
}

// Relative L2 deviation of the tensors of file a from those of file b: over all tensors together
// (||a - b|| / ||b||), and the largest per tensor. (An element-wise bound would be meaningless:
// AdamW's update g / (sqrt(v) + eps) turns a last-bit difference of a near-zero gradient into a
// difference of up to lr * |dg| / eps in that one weight.)
struct Deviation {
  double whole = 0, worst_tensor = 0;
  std::string worst_name;
};
inline Deviation relative_deviation(const std::string& file_a, const std::string& file_b) {
  SafetensorsFile a = SafetensorsFile::open(file_a), b = SafetensorsFile::open(file_b);
  EXPECT_EQ(a.names(), b.names());
  Deviation out;
  double diff_total = 0, norm_total = 0;
  for (const std::string& name : b.names()) {
    if (!a.contains(name)) return {INFINITY, INFINITY, name};
    const std::vector<double> x = a.read_as<double>(name), y = b.read_as<double>(name);
    if (x.size() != y.size()) return {INFINITY, INFINITY, name};
    double diff = 0, norm = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      diff += (x[i] - y[i]) * (x[i] - y[i]);
      norm += y[i] * y[i];
    }
    diff_total += diff;
    norm_total += norm;
    const double relative = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    if (relative > out.worst_tensor) {
      out.worst_tensor = relative;
      out.worst_name = name;
    }
  }
  out.whole = norm_total > 0 ? std::sqrt(diff_total / norm_total) : std::sqrt(diff_total);
  return out;
}

// The agreement claimed where the reduction order differs from a single process's: whole files
// within 1e-6 relative (L2), every tensor within 1e-5.
inline void expect_close_checkpoint(const std::string& dir, const std::string& reference) {
  for (const char* file : {"/model.safetensors", "/optimizer.safetensors"}) {
    const Deviation d = relative_deviation(dir + file, reference + file);
    EXPECT_LE(d.whole, 1e-6) << file;
    EXPECT_LE(d.worst_tensor, 1e-5) << file << ": " << d.worst_name;
  }
}

inline std::vector<nlohmann::json> read_metrics(const std::string& out_dir) {
  return read_metrics_file((std::filesystem::path(out_dir) / "metrics.jsonl").string());
}

// The logged values that must agree with a single process: losses, gradient norm, validation.
inline const std::vector<std::string>& compared_metrics() {
  static const std::vector<std::string> keys = {"loss", "loss_main", "loss_mtp", "loss_balance",
                                                "grad_norm", "val_loss", "tokens"};
  return keys;
}

// Every compared metric of every step: bitwise equal (tolerance 0) or within `relative`.
inline void expect_same_metrics(const std::string& run, const std::string& reference,
                                double relative) {
  const auto a = read_metrics(run), b = read_metrics(reference);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(b.empty());
  for (size_t i = 0; i < b.size(); ++i)
    for (const std::string& key : compared_metrics()) {
      ASSERT_EQ(a[i].contains(key), b[i].contains(key)) << key;
      if (!b[i].contains(key)) continue;
      const double x = a[i][key].get<double>(), y = b[i][key].get<double>();
      if (relative == 0)
        EXPECT_EQ(x, y) << key << " at step " << i + 1;
      else
        EXPECT_LE(std::fabs(x - y), relative * std::fabs(y)) << key << " at step " << i + 1;
    }
}

// True on every rank when every rank's `values` are bitwise those of rank 0.
inline bool same_on_every_rank(Communicator& group, const std::vector<float>& values) {
  std::vector<float> all(values.size() * static_cast<size_t>(group.size()));
  group.all_gather(all.data(), values.data(), static_cast<int64_t>(values.size()), CommType::F32);
  for (int r = 1; r < group.size(); ++r)
    if (!std::equal(values.begin(), values.end(), all.begin() + r * values.size(),
                    [](float x, float y) { return std::memcmp(&x, &y, sizeof(float)) == 0; }))
      return false;
  return true;
}

}  // namespace frugal::testing
