// frugal convert's two directions (declared in hf_checkpoint.h):
//   import: Hugging Face directory -> frugal checkpoint, streamed tensor by tensor into one F32
//           model.safetensors (header first, SafetensorsStreamWriter);
//   export: frugal checkpoint -> Hugging Face shards, one output shard in memory at a time.
// Both write into "<out_dir>.tmp-<pid>" and rename it into place when everything is written.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/config_io.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "kernels/quant/quant.h"
#include "train/checkpoint.h"

namespace frugal {
namespace fs = std::filesystem;

namespace {

// Files that travel with the weights in both directions, when present.
constexpr const char* kSideFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                      "generation_config.json", "special_tokens_map.json"};

fs::path clean_path(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.has_filename()) return p;
  return p.parent_path();  // "out/" -> "out"
}

// Refuses an existing non-empty output; returns the temporary directory to fill.
fs::path begin_output(const fs::path& out_dir) {
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    FRUGAL_CHECK(fs::is_directory(out_dir, ec) && fs::is_empty(out_dir, ec),
                 "{}: already exists and is not an empty directory (convert never overwrites)",
                 out_dir.string());
  }
  const fs::path temp = out_dir.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(temp, ec);
  fs::create_directories(temp, ec);
  FRUGAL_CHECK(!ec, "{}: cannot create the directory: {}", temp.string(), ec.message());
  return temp;
}

void finish_output(const fs::path& temp, const fs::path& out_dir) {
  std::error_code ec;
  if (fs::exists(out_dir, ec)) fs::remove(out_dir, ec);  // the empty directory checked before
  fs::rename(temp, out_dir, ec);
  FRUGAL_CHECK(!ec, "{}: cannot move the finished output into place: {}", out_dir.string(),
               ec.message());
}

// Runs `body` on the temporary directory; on any error the directory is removed and the error
// names the output.
template <class Body>
void with_output(const fs::path& out_dir, Body&& body) {
  const fs::path temp = begin_output(out_dir);
  try {
    body(temp);
    finish_output(temp, out_dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(temp, ec);
    throw;
  }
}

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FRUGAL_CHECK(in.good(), "{}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void copy_side_files(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  for (const char* name : kSideFiles)
    if (fs::is_regular_file(from / name, ec))
      write_file_atomic((to / name).string(), read_file_bytes(from / name));
}

// One output tensor of an export and where its values come from.
struct ExportTensor {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
  std::string source;  // tensor of the frugal checkpoint
  bool fp8 = false;    // F8_E4M3 weight; its scale is the next tensor of the unit
};
using ExportUnit = std::vector<ExportTensor>;  // tensors that must share a shard

uint64_t unit_bytes(const ExportUnit& unit) {
  uint64_t bytes = 0;
  for (const ExportTensor& t : unit)
    bytes += static_cast<uint64_t>(shape_numel(t.shape)) * dtype_size(t.dtype);
  return bytes;
}

std::vector<ExportUnit> plan_export(const ModelConfig& cfg, bool fp8) {
  std::vector<ExportUnit> units;
  const std::vector<HfTensorSpec> duplicates = hf_mtp_duplicates(cfg);
  for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) {
    if (fp8 && spec.fp8) {
      const std::vector<int64_t> scale_shape = {fp8_block_count(spec.shape[0]),
                                                fp8_block_count(spec.shape[1])};
      units.push_back({{spec.name, DType::F8_E4M3, spec.shape, spec.name, true},
                       {fp8_scale_name(spec.name), DType::F32, scale_shape, spec.name, false}});
    } else {
      const DType dtype = spec.kind == ParamKind::Buffer ? DType::F32 : DType::BF16;
      units.push_back({{spec.name, dtype, spec.shape, spec.name, false}});
    }
    // After each MTP module: its copies of the embedding and the head (spec §9.1).
    for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
      if (spec.name != mtp_layer_prefix(cfg, k) + "shared_head.norm.weight") continue;
      units.push_back({{duplicates[2 * k].name, DType::BF16, duplicates[2 * k].shape,
                        "model.embed_tokens.weight", false}});
      units.push_back({{duplicates[2 * k + 1].name, DType::BF16, duplicates[2 * k + 1].shape,
                        "lm_head.weight", false}});
    }
  }
  return units;
}

// The frugal checkpoint's model.safetensors must hold exactly the model's tensors.
void check_frugal_weights(const SafetensorsFile& file, const ModelConfig& cfg) {
  std::set<std::string> known;
  for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) {
    known.insert(spec.name);
    FRUGAL_CHECK(file.contains(spec.name), "{}: tensor {} is missing (the config needs shape {})",
                 file.path(), spec.name, shape_text(spec.shape));
    const TensorInfo& info = file.info(spec.name);
    FRUGAL_CHECK(info.shape == spec.shape, "{}: tensor {} has shape {}, the config needs {}",
                 file.path(), spec.name, shape_text(info.shape), shape_text(spec.shape));
    const bool floating = info.dtype == DType::F32 || info.dtype == DType::BF16 ||
                          info.dtype == DType::F16 || info.dtype == DType::F64;
    FRUGAL_CHECK(floating, "{}: tensor {} has dtype {}, expected a floating type", file.path(),
                 spec.name, dtype_name(info.dtype));
  }
  for (const std::string& name : file.names())
    FRUGAL_CHECK(known.count(name), "{}: tensor {} does not belong to this model (check the config)",
                 file.path(), name);
}

}  // namespace

ModelConfig frugal_checkpoint_model_config(const std::string& checkpoint_dir) {
  const fs::path dir(checkpoint_dir);
  std::error_code ec;
  if (fs::exists(dir / "frugal.toml", ec)) return load_config((dir / "frugal.toml").string()).model;
  FRUGAL_CHECK(fs::exists(dir / "config.json", ec), "{}: neither frugal.toml nor config.json",
               checkpoint_dir);
  return load_hf_config((dir / "config.json").string());
}

ConvertSummary import_hf_checkpoint(const std::string& hf_dir, const std::string& out_dir) {
  const HfCheckpointReader reader(hf_dir);  // everything is validated before anything is written
  ConvertSummary summary;
  summary.notes = reader.notes();
  summary.shards = reader.shard_count();
  summary.fp8_tensors = reader.fp8_tensor_count();
  const fs::path out = clean_path(out_dir);
  with_output(out, [&](const fs::path& temp) {
    std::vector<StreamTensor> tensors;
    for (const HfTensorSpec& spec : reader.tensors())
      tensors.push_back({spec.name, DType::F32, spec.shape});
    SafetensorsStreamWriter writer((temp / "model.safetensors").string(), tensors,
                                   {{"format", "pt"}, {"producer", "frugal convert"}});
    reader.read([&](const HfTensorSpec& spec, const float* values) {
      const size_t bytes = static_cast<size_t>(shape_numel(spec.shape)) * sizeof(float);
      writer.write_next(spec.name, values, bytes);
      summary.bytes += bytes;
      ++summary.tensors;
    });
    writer.commit();

    Config config;
    config.model = reader.config();
    config.train.seq_len = std::min(config.train.seq_len, config.model.max_position_embeddings);
    // data.tokenizer only matters to training; it names the copied tokenizer, if any ("bytes"
    // would claim 256 byte ids the vocabulary may not have).
    std::error_code ec;
    config.data.tokenizer = fs::exists(fs::path(hf_dir) / "tokenizer.json", ec) ? "tokenizer.json"
                            : config.model.vocab_size >= 256                    ? "bytes"
                                                                                : "none";
    write_file_atomic((temp / "config.json").string(),
                      model_config_to_hf_json(config.model).dump(2) + "\n");
    write_file_atomic((temp / "frugal.toml").string(), config_to_toml(config));
    copy_side_files(hf_dir, temp);
  });
  return summary;
}

ConvertSummary export_hf_checkpoint(const std::string& checkpoint, const std::string& out_dir,
                                    const HfExportOptions& options) {
  FRUGAL_CHECK(options.shard_bytes > 0, "convert: the shard size must be positive");
  const std::string dir = resolve_checkpoint(checkpoint);
  const ModelConfig cfg = frugal_checkpoint_model_config(dir);
  const SafetensorsFile source = SafetensorsFile::open((fs::path(dir) / "model.safetensors").string());
  check_frugal_weights(source, cfg);

  // Shards: units packed in order, a new shard whenever the next unit would overflow this one.
  std::vector<std::vector<ExportUnit>> shards;
  uint64_t shard_size = 0, total_size = 0;
  for (ExportUnit& unit : plan_export(cfg, options.fp8)) {
    const uint64_t bytes = unit_bytes(unit);
    if (shards.empty() || (shard_size > 0 && shard_size + bytes > options.shard_bytes)) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(std::move(unit));
    shard_size += bytes;
    total_size += bytes;
  }

  ConvertSummary summary;
  summary.shards = static_cast<int64_t>(shards.size());
  const fs::path out = clean_path(out_dir);
  with_output(out, [&](const fs::path& temp) {
    nlohmann::json weight_map = nlohmann::json::object();
    std::vector<float> values;
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      SafetensorsWriter writer;
      writer.set_metadata("format", "pt");
      for (const ExportUnit& unit : shards[s]) {
        source.read_as(unit.front().source, values);
        const ExportTensor& first = unit.front();
        if (first.fp8) {
          const ExportTensor& scale = unit.at(1);
          std::string codes(values.size(), '\0');
          std::vector<float> scales(static_cast<size_t>(shape_numel(scale.shape)));
          cpu::quantize_weight_128x128(reinterpret_cast<uint8_t*>(codes.data()), scales.data(),
                                       values.data(), first.shape[0], first.shape[1],
                                       /*power_of_two_scale=*/false);
          writer.add(first.name, DType::F8_E4M3, first.shape, codes);
          writer.add_converted(scale.name, DType::F32, scale.shape, scales.data());
          ++summary.fp8_tensors;
        } else {
          writer.add_converted(first.name, first.dtype, first.shape, values.data());
        }
        for (const ExportTensor& t : unit) weight_map[t.name] = file;
        summary.tensors += static_cast<int64_t>(unit.size());
      }
      writer.write((temp / file).string());
    }
    summary.bytes = total_size;
    const nlohmann::json index = {{"metadata", {{"total_size", total_size}}},
                                  {"weight_map", weight_map}};
    write_file_atomic((temp / "model.safetensors.index.json").string(), index.dump(2) + "\n");

    nlohmann::json config = model_config_to_hf_json(cfg);
    config["torch_dtype"] = "bfloat16";
    if (options.fp8)
      config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                       {"fmt", "e4m3"},
                                       {"quant_method", "fp8"},
                                       {"weight_block_size", {kFp8BlockSize, kFp8BlockSize}}};
    write_file_atomic((temp / "config.json").string(), config.dump(2) + "\n");
    copy_side_files(dir, temp);
  });
  return summary;
}

}  // namespace frugal
