#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "io/config_io.h"
#include "io/model_io.h"
#include "io/safetensors.h"

namespace frugal {
namespace fs = std::filesystem;

namespace {

constexpr const char* kLatest = "latest";
constexpr const char* kPrefix = "checkpoint-";

std::string checkpoint_name(int64_t step) { return fmt::format("{}{:08d}", kPrefix, step); }

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string read_small_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FRUGAL_CHECK(in.good(), "{}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> list_checkpoints(const fs::path& out_dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(out_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind(kPrefix, 0) == 0 &&
        name.find(".tmp") == std::string::npos)
      found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

std::string save_checkpoint(const std::string& out_dir, const Config& config,
                            const Transformer<float>& model, const AdamW<float>& optimizer,
                            const TrainerState& state, int64_t keep) {
  fs::create_directories(out_dir);
  const fs::path final_dir = fs::path(out_dir) / checkpoint_name(state.step);
  const fs::path temp_dir = fs::path(out_dir) / (checkpoint_name(state.step) + ".tmp-" +
                                                 std::to_string(::getpid()));
  fs::remove_all(temp_dir);
  fs::create_directories(temp_dir);
  try {
    save_params(model.params(), (temp_dir / "model.safetensors").string(), DType::F32,
                {{"format", "pt"}, {"producer", "frugal"}});
    write_file_atomic((temp_dir / "config.json").string(),
                      model_config_to_hf_json(config.model).dump(2) + "\n");
    write_file_atomic((temp_dir / "frugal.toml").string(), config_to_toml(config));

    SafetensorsWriter moments;
    for (const auto& s : optimizer.state()) {
      const auto& shape = model.params().get(s.name).shape;
      moments.add_converted(s.name + ".exp_avg", DType::F32, shape, s.m.data());
      moments.add_converted(s.name + ".exp_avg_sq", DType::F32, shape, s.v.data());
    }
    moments.set_metadata("step_count", std::to_string(optimizer.step_count()));
    moments.write((temp_dir / "optimizer.safetensors").string());

    nlohmann::json trainer = {{"format_version", 1},
                              {"step", state.step},
                              {"tokens_seen", state.tokens_seen},
                              {"train_data", state.train_data}};
    write_file_atomic((temp_dir / "trainer_state.json").string(), trainer.dump(2) + "\n");
    fsync_path(temp_dir);

    // Replace an existing directory of the same step only after the new one is complete.
    if (fs::exists(final_dir)) {
      fs::path old = final_dir.string() + ".old";
      fs::remove_all(old);
      fs::rename(final_dir, old);
      fs::rename(temp_dir, final_dir);
      fs::remove_all(old);
    } else {
      fs::rename(temp_dir, final_dir);
    }
    fsync_path(out_dir);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temp_dir);
    fail("{}: cannot write checkpoint: {}", out_dir, e.what());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(temp_dir, ec);
    throw;
  }
  write_file_atomic((fs::path(out_dir) / kLatest).string(), final_dir.filename().string() + "\n");

  auto all = list_checkpoints(out_dir);
  for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < all.size(); ++i)
    if (all[i] != final_dir) fs::remove_all(all[i]);
  return final_dir.string();
}

bool has_checkpoint(const std::string& out_dir) {
  return fs::exists(fs::path(out_dir) / kLatest) || !list_checkpoints(out_dir).empty();
}

std::string resolve_checkpoint(const std::string& path) {
  fs::path p(path);
  FRUGAL_CHECK(fs::exists(p), "{}: no such checkpoint or run directory", path);
  if (fs::exists(p / "model.safetensors")) return p.string();
  if (fs::exists(p / kLatest)) {
    std::string name = read_small_file(p / kLatest);
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    fs::path dir = p / name;
    FRUGAL_CHECK(fs::exists(dir / "model.safetensors"), "{}: 'latest' names {}, which is not a checkpoint",
                 path, dir.string());
    return dir.string();
  }
  fail("{}: not a checkpoint (no model.safetensors) and not a run directory (no 'latest')", path);
}

Config load_checkpoint_config(const std::string& checkpoint_dir) {
  return load_config((fs::path(checkpoint_dir) / "frugal.toml").string());
}

void load_checkpoint_model(const std::string& checkpoint_dir, Transformer<float>& model) {
  load_params(model.params(), (fs::path(checkpoint_dir) / "model.safetensors").string());
}

void load_checkpoint_training(const std::string& checkpoint_dir, AdamW<float>& optimizer,
                              TrainerState& state) {
  const fs::path dir(checkpoint_dir);
  SafetensorsFile moments = SafetensorsFile::open((dir / "optimizer.safetensors").string());
  std::vector<float> m, v;
  for (const auto& s : optimizer.state()) {
    FRUGAL_CHECK(moments.contains(s.name + ".exp_avg") && moments.contains(s.name + ".exp_avg_sq"),
                 "{}: optimizer state for {} is missing", moments.path(), s.name);
    moments.read_as(s.name + ".exp_avg", m);
    moments.read_as(s.name + ".exp_avg_sq", v);
    optimizer.set_state(s.name, m, v);
  }
  auto it = moments.metadata().find("step_count");
  FRUGAL_CHECK(it != moments.metadata().end(), "{}: no step_count in the metadata", moments.path());
  optimizer.set_step_count(std::stoll(it->second));

  const std::string path = (dir / "trainer_state.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_small_file(path));
    state.step = j.at("step").get<int64_t>();
    state.tokens_seen = j.at("tokens_seen").get<int64_t>();
    state.train_data = j.at("train_data");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed trainer state: {}", path, e.what());
  }
}

}  // namespace frugal
