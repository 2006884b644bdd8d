// Hugging Face checkpoint reader: config, index, shards, validation, conversion to float
// (see hf_checkpoint.h for the accepted formats and the rules).
#include "io/hf_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/config_io.h"
#include "io/safetensors.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kScaleSuffix = "_scale_inv";

bool is_plain_float(DType d) {
  return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FRUGAL_CHECK(in.good(), "{}: cannot read", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json parse_json_file(const fs::path& path) {
  try {
    return nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON at byte {}: {}", path.string(), e.byte, e.what());
  }
}

// quantization_config, when present, must describe DeepSeek's FP8 block format.
void check_quantization_config(const nlohmann::json& config, const std::string& source) {
  auto it = config.find("quantization_config");
  if (it == config.end() || it->is_null()) return;
  const nlohmann::json& q = *it;
  FRUGAL_CHECK(q.is_object(), "{}: quantization_config must be an object", source);
  auto text = [&](const char* key) -> std::string {
    auto v = q.find(key);
    if (v == q.end() || v->is_null()) return "";
    FRUGAL_CHECK(v->is_string(), "{}: quantization_config.{} must be a string", source, key);
    return v->get<std::string>();
  };
  const std::string method = text("quant_method");
  FRUGAL_CHECK(method == "fp8",
               "{}: quantization_config.quant_method \"{}\" is not supported (frugal reads "
               "DeepSeek's \"fp8\" 128x128 block format)", source, method);
  const std::string format = text("fmt");
  FRUGAL_CHECK(format.empty() || format == "e4m3",
               "{}: quantization_config.fmt \"{}\" is not supported (expected \"e4m3\")", source,
               format);
  auto block = q.find("weight_block_size");
  if (block != q.end() && !block->is_null()) {
    const bool ok = block->is_array() && block->size() == 2 && (*block)[0].is_number_integer() &&
                    (*block)[1].is_number_integer() && (*block)[0].get<int64_t>() == kFp8BlockSize &&
                    (*block)[1].get<int64_t>() == kFp8BlockSize;
    FRUGAL_CHECK(ok, "{}: quantization_config.weight_block_size {} is not supported (expected "
                 "[128, 128])", source, block->dump());
  }
}

// "model.layers.<n>.<rest>" -> n, else -1.
int64_t layer_number(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  size_t end = prefix.size();
  int64_t n = 0;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9' && n < (int64_t{1} << 40))
    n = n * 10 + (name[end++] - '0');
  if (end == prefix.size() || end >= name.size() || name[end] != '.') return -1;
  return n;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Shard file names from an index must be plain files in the checkpoint directory.
void check_shard_name(const std::string& file, const std::string& index_path,
                      const std::string& tensor) {
  const bool ok = !file.empty() && file != "." && file != ".." &&
                  file.find('/') == std::string::npos && file.find('\\') == std::string::npos;
  FRUGAL_CHECK(ok, "{}: tensor {} maps to \"{}\", which is not a file name in this directory",
               index_path, tensor, file);
}

}  // namespace

struct HfCheckpointReader::Source {
  enum class Kind { Plain, Fp8, Slice } kind = Kind::Plain;
  int shard = -1;
  std::string tensor;
  int scale_shard = -1;         // Fp8
  std::string scale_tensor;     // Fp8
  int64_t element_offset = 0;   // Slice: first element of the slice inside `tensor`
};

HfCheckpointReader::~HfCheckpointReader() = default;

HfCheckpointReader::HfCheckpointReader(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  std::error_code ec;
  FRUGAL_CHECK(fs::is_directory(root, ec), "{}: not a directory (expected a Hugging Face model "
               "directory with config.json and safetensors files)", dir);
  const fs::path config_path = root / "config.json";
  FRUGAL_CHECK(fs::exists(config_path, ec), "{}: no config.json (not a Hugging Face model directory)",
               dir);
  const nlohmann::json config_json = parse_json_file(config_path);
  config_ = model_config_from_json(config_json, config_path.string());
  check_quantization_config(config_json, config_path.string());

  // tensor name -> shard index, from the index or the single file.
  std::map<std::string, int> location;
  const fs::path index_path = root / kIndexFile;
  if (fs::exists(index_path, ec)) {
    const nlohmann::json index = parse_json_file(index_path);
    FRUGAL_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                 "{}: no \"weight_map\" object", index_path.string());
    std::map<std::string, int> shard_of_file;
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      FRUGAL_CHECK(file.is_string(), "{}: weight_map entry {} is not a file name",
                   index_path.string(), tensor);
      check_shard_name(file.get<std::string>(), index_path.string(), tensor);
      shard_of_file.emplace(file.get<std::string>(), 0);
    }
    FRUGAL_CHECK(!shard_of_file.empty(), "{}: the weight_map is empty", index_path.string());
    for (auto& [file, shard] : shard_of_file) {
      const fs::path path = root / file;
      FRUGAL_CHECK(fs::exists(path, ec), "{}: names shard {}, which does not exist ({})",
                   index_path.string(), file, path.string());
      shard = static_cast<int>(shard_names_.size());
      shard_names_.push_back(file);
      shards_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path.string())));
    }
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      const int shard = shard_of_file.at(file.get<std::string>());
      FRUGAL_CHECK(shards_[shard]->contains(tensor),
                   "{}: says tensor {} is in {}, which has no such tensor", index_path.string(),
                   tensor, shards_[shard]->path());
      location[tensor] = shard;
    }
    for (size_t s = 0; s < shards_.size(); ++s)
      for (const std::string& tensor : shards_[s]->names()) {
        auto it = location.find(tensor);
        FRUGAL_CHECK(it != location.end() && it->second == static_cast<int>(s),
                     "{}: tensor {} is not listed for this file in {}", shards_[s]->path(), tensor,
                     index_path.string());
      }
  } else {
    const fs::path single = root / kSingleFile;
    FRUGAL_CHECK(fs::exists(single, ec), "{}: neither {} nor {} exists", dir, kIndexFile,
                 kSingleFile);
    shard_names_.push_back(kSingleFile);
    shards_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(single.string())));
    for (const std::string& tensor : shards_[0]->names()) location[tensor] = 0;
  }
  auto where = [&](const std::string& tensor) { return shards_[location.at(tensor)]->path(); };
  auto info_of = [&](const std::string& tensor) -> const TensorInfo& {
    return shards_[location.at(tensor)]->info(tensor);
  };

  // MTP depths: keep each depth that has tensors; the first absent one ends the model.
  const int64_t configured_depth = config_.num_nextn_predict_layers;
  for (int64_t k = 0; k < configured_depth; ++k) {
    const std::string prefix = mtp_layer_prefix(config_, k);
    auto it = location.lower_bound(prefix);
    if (it == location.end() || it->first.rfind(prefix, 0) != 0) {
      config_.num_nextn_predict_layers = k;
      notes_.push_back(fmt::format(
          "config.json has num_nextn_predict_layers = {} but the files hold no tensor of {}*: "
          "read with {} MTP module(s)", configured_depth, prefix, k));
      break;
    }
  }
  const int64_t last_layer = config_.num_hidden_layers + config_.num_nextn_predict_layers;

  const std::vector<HfTensorSpec> layout = hf_tensor_layout(config_);
  std::unordered_map<std::string, size_t> expected;
  for (size_t i = 0; i < layout.size(); ++i) expected.emplace(layout[i].name, i);
  std::unordered_map<std::string, HfTensorSpec> duplicates;
  for (const HfTensorSpec& d : hf_mtp_duplicates(config_)) duplicates.emplace(d.name, d);
  std::vector<Source> found(layout.size());
  int64_t ignored_rotary = 0, ignored_layers = 0;

  auto set_source = [&](size_t i, Source source) {
    FRUGAL_CHECK(found[i].shard < 0, "{}: tensor {} is given twice (per-expert and fused forms)",
                 dir, layout[i].name);
    found[i] = std::move(source);
  };

  for (const auto& [name, shard] : location) {
    const TensorInfo& info = shards_[shard]->info(name);
    const std::string& path = shards_[shard]->path();
    if (auto it = expected.find(name); it != expected.end()) {
      const HfTensorSpec& spec = layout[it->second];
      FRUGAL_CHECK(info.shape == spec.shape, "{}: tensor {} has shape {}, config.json needs {}",
                   path, name, shape_text(info.shape), shape_text(spec.shape));
      if (info.dtype == DType::F8_E4M3) {
        FRUGAL_CHECK(spec.kind == ParamKind::Matrix && spec.shape.size() == 2,
                     "{}: tensor {} is F8_E4M3; only 2-D weight matrices may be FP8", path, name);
        const std::string scale = fp8_scale_name(name);
        FRUGAL_CHECK(location.count(scale), "{}: tensor {} is FP8 (F8_E4M3) but its block scale "
                     "{} is missing", path, name, scale);
        const TensorInfo& s = info_of(scale);
        const std::vector<int64_t> scale_shape = {fp8_block_count(spec.shape[0]),
                                                  fp8_block_count(spec.shape[1])};
        FRUGAL_CHECK(is_plain_float(s.dtype), "{}: tensor {} has dtype {}, expected F32",
                     where(scale), scale, dtype_name(s.dtype));
        FRUGAL_CHECK(s.shape == scale_shape, "{}: tensor {} has shape {}, the 128x128 blocks of {} "
                     "{} need {}", where(scale), scale, shape_text(s.shape), name,
                     shape_text(spec.shape), shape_text(scale_shape));
        Source source{Source::Kind::Fp8, shard, name, location.at(scale), scale, 0};
        set_source(it->second, std::move(source));
        ++fp8_count_;
      } else {
        FRUGAL_CHECK(is_plain_float(info.dtype), "{}: tensor {} has dtype {}, expected F32, BF16, "
                     "F16, F64 or F8_E4M3 with a weight_scale_inv", path, name,
                     dtype_name(info.dtype));
        FRUGAL_CHECK(!location.count(fp8_scale_name(name)), "{}: tensor {} has a block scale {} "
                     "but is {}, not F8_E4M3", path, name, fp8_scale_name(name),
                     dtype_name(info.dtype));
        set_source(it->second, Source{Source::Kind::Plain, shard, name, -1, "", 0});
      }
      continue;
    }
    if (ends_with(name, kScaleSuffix)) {
      const std::string weight = name.substr(0, name.size() - std::string(kScaleSuffix).size());
      FRUGAL_CHECK(location.count(weight) && expected.count(weight),
                   "{}: tensor {} is a block scale of {}, which {}", path, name, weight,
                   location.count(weight) ? "does not belong to this model" : "is missing");
      continue;  // checked with its weight
    }
    if (auto it = duplicates.find(name); it != duplicates.end()) {
      FRUGAL_CHECK(info.shape == it->second.shape, "{}: tensor {} has shape {}, config.json needs {}",
                   path, name, shape_text(info.shape), shape_text(it->second.shape));
      continue;  // the main model's embedding / head are used instead
    }
    if (ends_with(name, ".rotary_emb.inv_freq")) {
      ++ignored_rotary;
      continue;
    }
    const int64_t layer = layer_number(name);
    const std::string layer_prefix = "model.layers." + std::to_string(layer) + ".mlp.experts.";
    const bool fused_gate_up = name == layer_prefix + "gate_up_proj";
    if (layer >= 0 && (fused_gate_up || name == layer_prefix + "down_proj")) {
      FRUGAL_CHECK(expected.count(layer_prefix + "0.gate_proj.weight"),
                   "{}: tensor {} does not belong to this model (layer {} has no routed experts "
                   "in config.json)", path, name, layer);
      const int64_t E = config_.n_routed_experts, I = config_.moe_intermediate_size,
                    H = config_.hidden_size;
      const std::vector<int64_t> shape =
          fused_gate_up ? std::vector<int64_t>{E, 2 * I, H} : std::vector<int64_t>{E, H, I};
      FRUGAL_CHECK(info.shape == shape, "{}: tensor {} has shape {}, config.json needs {}", path,
                   name, shape_text(info.shape), shape_text(shape));
      FRUGAL_CHECK(is_plain_float(info.dtype), "{}: tensor {} has dtype {}; fused experts are read "
                   "in F32, BF16, F16 or F64 only", path, name, dtype_name(info.dtype));
      for (int64_t e = 0; e < E; ++e) {
        const std::string expert = layer_prefix + std::to_string(e);
        if (fused_gate_up) {
          set_source(expected.at(expert + ".gate_proj.weight"),
                     Source{Source::Kind::Slice, shard, name, -1, "", e * 2 * I * H});
          set_source(expected.at(expert + ".up_proj.weight"),
                     Source{Source::Kind::Slice, shard, name, -1, "", (e * 2 * I + I) * H});
        } else {
          set_source(expected.at(expert + ".down_proj.weight"),
                     Source{Source::Kind::Slice, shard, name, -1, "", e * H * I});
        }
      }
      continue;
    }
    if (layer >= last_layer) {
      ++ignored_layers;
      continue;
    }
    fail("{}: tensor {} does not belong to a {} model with this config.json", path, name,
         config_.model_type);
  }
  if (ignored_rotary > 0)
    notes_.push_back(fmt::format("ignored {} rotary_emb.inv_freq buffer(s)", ignored_rotary));
  if (ignored_layers > 0)
    notes_.push_back(fmt::format("ignored {} tensor(s) of layers >= {} (past the MTP modules read)",
                                 ignored_layers, last_layer));

  for (size_t i = 0; i < layout.size(); ++i)
    FRUGAL_CHECK(found[i].shard >= 0, "{}: tensor {} is missing (config.json needs shape {})", dir,
                 layout[i].name, shape_text(layout[i].shape));

  // Visit order: shard by shard, then by position in the file.
  std::vector<size_t> order(layout.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto key = [&](size_t i) {
    const Source& s = found[i];
    return std::make_tuple(s.shard, shards_[s.shard]->info(s.tensor).data_begin, s.element_offset);
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
  for (size_t i : order) {
    order_.push_back(layout[i]);
    sources_.push_back(std::move(found[i]));
  }
}

void HfCheckpointReader::read(
    const std::function<void(const HfTensorSpec&, const float* values)>& visit) const {
  std::vector<float> values, scales;
  std::vector<double> chunk;
  for (size_t i = 0; i < order_.size(); ++i) {
    const HfTensorSpec& spec = order_[i];
    const Source& source = sources_[i];
    const SafetensorsFile& file = *shards_[source.shard];
    const size_t numel = static_cast<size_t>(shape_numel(spec.shape));
    switch (source.kind) {
      case Source::Kind::Plain:
        file.read_as(source.tensor, values);
        break;
      case Source::Kind::Fp8: {
        shards_[source.scale_shard]->read_as(source.scale_tensor, scales);
        values.resize(numel);
        cpu::dequantize_weight_128x128(values.data(),
                                       static_cast<const uint8_t*>(file.data(source.tensor)),
                                       scales.data(), spec.shape[0], spec.shape[1]);
        break;
      }
      case Source::Kind::Slice: {
        const TensorInfo& info = file.info(source.tensor);
        const size_t element = dtype_size(info.dtype);
        const unsigned char* base = static_cast<const unsigned char*>(file.data(source.tensor)) +
                                    static_cast<size_t>(source.element_offset) * element;
        values.resize(numel);
        constexpr size_t kChunk = 1 << 14;
        chunk.resize(kChunk);
        for (size_t start = 0; start < numel; start += kChunk) {
          const size_t n = std::min(kChunk, numel - start);
          convert_to_double(base + start * element, info.dtype, chunk.data(), n);
          for (size_t j = 0; j < n; ++j) values[start + j] = static_cast<float>(chunk[j]);
        }
        break;
      }
    }
    FRUGAL_CHECK(values.size() == numel, "{}: tensor {} read {} values, expected {}", file.path(),
                 spec.name, values.size(), numel);
    visit(spec, values.data());
  }
}

void load_hf_weights(const HfCheckpointReader& reader, Transformer<float>& model) {
  FRUGAL_CHECK(model.config() == reader.config(),
               "{}: the model was not built from this checkpoint's config", reader.dir());
  reader.read([&](const HfTensorSpec& spec, const float* values) {
    Param<float>& p = model.params().get(spec.name);
    FRUGAL_CHECK(p.shape == spec.shape, "{}: tensor {} has shape {}, the model has {}",
                 reader.dir(), spec.name, shape_text(spec.shape), shape_text(p.shape));
    std::copy(values, values + p.numel(), p.value.begin());
  });
}

}  // namespace frugal
