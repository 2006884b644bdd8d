#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/parse_int.h"
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

// True for "checkpoint-<digits>" exactly: temporary ("...tmp-<pid>") and replaced ("....old")
// directories are not checkpoints.
bool is_checkpoint_name(const std::string& name) {
  const std::string prefix = kPrefix;
  if (name.size() <= prefix.size() || name.rfind(prefix, 0) != 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](char c) { return c >= '0' && c <= '9'; });
}

// The checkpoint directories in out_dir, oldest first (names are zero-padded step numbers).
std::vector<fs::path> list_checkpoints(const fs::path& out_dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (auto& entry : fs::directory_iterator(out_dir, ec)) {
    std::error_code type_ec;
    if (entry.is_directory(type_ec) && is_checkpoint_name(entry.path().filename().string()))
      found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end(), [](const fs::path& a, const fs::path& b) {
    const std::string x = a.filename().string(), y = b.filename().string();
    return x.size() != y.size() ? x.size() < y.size() : x < y;  // numeric order past 8 digits
  });
  return found;
}

int64_t parse_count(const std::string& text, const std::string& file, const char* key) {
  const int64_t value = parse_int64(text).value_or(-1);
  FRUGAL_CHECK(value >= 0,
               "{}: {} = '{}' is not a non-negative integer", file, key, text);
  return value;
}

}  // namespace

std::string save_checkpoint(const std::string& out_dir, const Config& config,
                            const Transformer<float>& model, const AdamW<float>& optimizer,
                            const TrainerState& state, int64_t keep) {
  const fs::path final_dir = fs::path(out_dir) / checkpoint_name(state.step);
  const fs::path temp_dir = fs::path(out_dir) / (checkpoint_name(state.step) + ".tmp-" +
                                                 std::to_string(::getpid()));
  auto discard_temp = [&] {
    std::error_code ec;
    fs::remove_all(temp_dir, ec);
  };
  try {
    fs::create_directories(out_dir);
    fs::remove_all(temp_dir);
    FRUGAL_CHECK(fs::create_directory(temp_dir), "{}: cannot create the temporary directory {}",
                 out_dir, temp_dir.string());
    save_params(model.params(), (temp_dir / "model.safetensors").string(), DType::F32,
                {{"format", "pt"}, {"producer", "frugal"}});
    write_file_atomic((temp_dir / "config.json").string(),
                      model_config_to_hf_json(config.model).dump(2) + "\n");
    // The process mesh is the run's, not the model's: any mesh writes the same file.
    Config saved = config;
    saved.train.pp = 1;
    saved.train.pp_schedule = TrainConfig{}.pp_schedule;
    saved.train.pp_stage_layers = TrainConfig{}.pp_stage_layers;
    saved.train.ep = 1;
    write_file_atomic((temp_dir / "frugal.toml").string(), config_to_toml(saved));
    // The tokenizer travels with the weights, so generate (and Hugging Face tools) find it there.
    if (config.data.tokenizer != "bytes")
      write_file_atomic((temp_dir / "tokenizer.json").string(), read_small_file(config.data.tokenizer));

    SafetensorsWriter moments;
    for (const auto& s : optimizer.state()) {
      const auto& shape = model.params().get(s.name).shape;
      moments.add_view(s.name + ".exp_avg", DType::F32, shape, s.m.data(), s.m.size() * sizeof(float));
      moments.add_view(s.name + ".exp_avg_sq", DType::F32, shape, s.v.data(),
                       s.v.size() * sizeof(float));
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
    discard_temp();
    fail("{}: cannot write checkpoint {}: {}", out_dir, final_dir.filename().string(),
         e.code().message());
  } catch (const Error& e) {
    discard_temp();
    fail("{}: cannot write checkpoint {}: {}", out_dir, final_dir.filename().string(), e.what());
  } catch (...) {
    discard_temp();
    throw;
  }
  write_file_atomic((fs::path(out_dir) / kLatest).string(), final_dir.filename().string() + "\n");

  // Pruning is best effort: the new checkpoint is complete and `latest` names it already.
  auto all = list_checkpoints(out_dir);
  for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < all.size(); ++i) {
    std::error_code ec;
    if (all[i] != final_dir) fs::remove_all(all[i], ec);
  }
  return final_dir.string();
}

bool has_checkpoint(const std::string& out_dir) {
  std::error_code ec;
  return fs::exists(fs::path(out_dir) / kLatest, ec) || !list_checkpoints(out_dir).empty();
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  FRUGAL_CHECK(fs::exists(p, ec), "{}: no such checkpoint or run directory", path);
  FRUGAL_CHECK(fs::is_directory(p, ec),
               "{}: not a directory (give a checkpoint directory or a run directory)", path);
  if (fs::exists(p / "model.safetensors", ec)) return p.string();
  if (fs::exists(p / kLatest, ec)) {
    std::string name = read_small_file(p / kLatest);
    name.erase(name.find_last_not_of(" \n\r\t") + 1);
    FRUGAL_CHECK(is_checkpoint_name(name), "{}: 'latest' holds '{}', not a checkpoint name",
                 path, name);
    const fs::path dir = p / name;
    FRUGAL_CHECK(fs::exists(dir / "model.safetensors", ec),
                 "{}: 'latest' names {}, which is not a checkpoint (no model.safetensors)", path,
                 dir.string());
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
  load_checkpoint_optimizer(checkpoint_dir, optimizer);
  load_checkpoint_trainer_state(checkpoint_dir, state);
}

void load_checkpoint_optimizer(const std::string& checkpoint_dir, AdamW<float>& optimizer) {
  const fs::path dir(checkpoint_dir);
  SafetensorsFile moments = SafetensorsFile::open((dir / "optimizer.safetensors").string());
  std::vector<float> m, v;
  for (const auto& s : optimizer.state()) {
    for (const std::string& name : {s.name + ".exp_avg", s.name + ".exp_avg_sq"}) {
      FRUGAL_CHECK(moments.contains(name), "{}: tensor {} is missing", moments.path(), name);
      const TensorInfo& info = moments.info(name);
      FRUGAL_CHECK(info.dtype == DType::F32, "{}: tensor {} has dtype {}, expected F32",
                   moments.path(), name, dtype_name(info.dtype));
      FRUGAL_CHECK(info.numel() == s.m.size(),
                   "{}: tensor {} has {} elements, the parameter has {}", moments.path(), name,
                   info.numel(), s.m.size());
    }
    moments.read_as(s.name + ".exp_avg", m);
    moments.read_as(s.name + ".exp_avg_sq", v);
    optimizer.set_state(s.name, m, v);
  }
  FRUGAL_CHECK(moments.names().size() == 2 * optimizer.state().size(),
               "{}: holds {} tensors, this model's optimizer has {} (a different model?)",
               moments.path(), moments.names().size(), 2 * optimizer.state().size());
  auto it = moments.metadata().find("step_count");
  FRUGAL_CHECK(it != moments.metadata().end(), "{}: no step_count in the metadata", moments.path());
  optimizer.set_step_count(parse_count(it->second, moments.path(), "step_count"));
}

void load_checkpoint_trainer_state(const std::string& checkpoint_dir, TrainerState& state) {
  const fs::path dir(checkpoint_dir);
  const std::string path = (dir / "trainer_state.json").string();
  try {
    const nlohmann::json j = nlohmann::json::parse(read_small_file(path));
    FRUGAL_CHECK(j.at("format_version").get<int64_t>() == 1,
                 "{}: format_version {} is not supported (expected 1)", path,
                 j.at("format_version").dump());
    state.step = j.at("step").get<int64_t>();
    state.tokens_seen = j.at("tokens_seen").get<int64_t>();
    state.train_data = j.at("train_data");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed trainer state: {}", path, e.what());
  }
  FRUGAL_CHECK(state.step >= 0 && state.tokens_seen >= 0,
               "{}: negative step ({}) or tokens_seen ({})", path, state.step, state.tokens_seen);
}

}  // namespace frugal
