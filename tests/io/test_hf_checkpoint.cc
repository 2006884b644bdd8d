// Hugging Face checkpoint conversion (io/hf_checkpoint.h):
//   - hf_tensor_layout equals what Transformer<float> registers (names, shapes, order, kinds);
//   - frugal -> HF (BF16, several shards) -> frugal is bitwise for BF16-representable weights, the
//     index lists every tensor once, MTP layers carry copies of the embedding and head;
//   - FP8 export: DeepSeek's tensors become F8_E4M3 + weight_scale_inv (edge blocks partial), the
//     rest BF16; import gives exactly dequantize(quantize(w)), within FP8's rounding of w;
//   - transformers' fused expert tensors and files without MTP layers are read;
//   - every hostile input (missing / unknown tensor, wrong shape or dtype, FP8 without scale, bad
//     scale shape, unknown model_type or quantization, index naming a missing shard or a tensor
//     its shard lacks, path escapes, existing output) is an error naming the file and tensor,
//     and nothing is written.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/rng.h"
#include "io/hf_checkpoint.h"
#include "io/hf_test_util.h"
#include "kernels/quant/quant.h"
#include "model/tiny_model_config.h"
#include "test_util.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;
using testing::error_message;
using testing::TempDir;

ModelConfig v2_style_config() {
  ModelConfig c = testing::tiny_model_config();
  c.model_type = "deepseek_v2";
  c.q_lora_rank = 0;
  c.topk_method = "greedy";
  c.scoring_func = "softmax";
  c.n_group = 1;
  c.topk_group = 1;
  c.n_shared_experts = 0;
  c.num_nextn_predict_layers = 0;
  c.first_k_dense_replace = 0;
  return c;
}

// Big enough for several 128x128 blocks with partial edges: hidden 136, inter 200, kv_b 2x80 rows.
ModelConfig fp8_config() {
  ModelConfig c = testing::tiny_model_config();
  c.hidden_size = 136;
  c.intermediate_size = 200;
  c.moe_intermediate_size = 40;
  c.q_lora_rank = 24;
  c.kv_lora_rank = 20;
  c.num_attention_heads = 5;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 16;
  c.vocab_size = 23;
  return c;
}

TEST(HfLayout, MatchesTransformerParameters) {
  ModelConfig dense = testing::tiny_model_config();
  dense.n_routed_experts = 0;
  for (const ModelConfig& cfg : {testing::tiny_model_config(), v2_style_config(), fp8_config(), dense}) {
    Transformer<float> model(cfg);
    const auto layout = hf_tensor_layout(cfg);
    const auto& params = model.params().all();
    ASSERT_EQ(layout.size(), params.size());
    for (size_t i = 0; i < layout.size(); ++i) {
      EXPECT_EQ(layout[i].name, params[i]->name) << i;
      EXPECT_EQ(layout[i].shape, params[i]->shape) << layout[i].name;
      const ParamKind kind = !params[i]->trainable   ? ParamKind::Buffer
                             : params[i]->weight_decay ? ParamKind::Matrix
                                                       : ParamKind::Norm;
      EXPECT_EQ(layout[i].kind, kind) << layout[i].name;
      // FP8 in DeepSeek's files: attention and FFN projections only.
      const bool projection = layout[i].name.find("_proj") != std::string::npos &&
                              layout[i].name.find("eh_proj") == std::string::npos;
      EXPECT_EQ(layout[i].fp8, projection) << layout[i].name;
    }
  }
}

TEST(HfConvert, Bf16RoundTripIsBitwise) {
  TempDir tmp("hfconv");
  const ModelConfig cfg = testing::tiny_model_config();
  Transformer<float> model(cfg);
  testing::randomize_model(model, 11, /*bf16_values=*/true);
  testing::write_frugal_checkpoint(tmp.path("ckpt"), model);

  HfExportOptions options;
  options.shard_bytes = 1024;  // several shards
  const ConvertSummary exported = export_hf_checkpoint(tmp.path("ckpt"), tmp.path("hf"), options);
  EXPECT_GT(exported.shards, 2);
  EXPECT_EQ(exported.fp8_tensors, 0);

  // The index maps every tensor to an existing shard that holds it; dtypes are BF16 (bias F32).
  const nlohmann::json index =
      nlohmann::json::parse(testing::read_bytes(tmp.path("hf/model.safetensors.index.json")));
  const auto& map = index.at("weight_map");
  EXPECT_EQ(map.size(), model.params().size() + 2);  // + the MTP layer's embedding and head
  uint64_t total = 0;
  for (auto& [name, file] : map.items()) {
    SafetensorsFile shard = SafetensorsFile::open(tmp.path("hf/" + file.get<std::string>()));
    ASSERT_TRUE(shard.contains(name)) << name;
    const bool bias = name.find("e_score_correction_bias") != std::string::npos;
    EXPECT_EQ(shard.info(name).dtype, bias ? DType::F32 : DType::BF16) << name;
    total += shard.info(name).byte_size();
  }
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total);
  const std::string mtp = mtp_layer_prefix(cfg, 0);
  const std::string head_file = map.at(mtp + "shared_head.head.weight");
  EXPECT_EQ(SafetensorsFile::open(tmp.path("hf/" + head_file)).read_as<float>(mtp + "shared_head.head.weight"),
            std::vector<float>(model.params().get("lm_head.weight").value));
  const ModelConfig back_cfg = load_hf_config(tmp.path("hf/config.json"));
  EXPECT_EQ(back_cfg, cfg);

  const ConvertSummary imported = import_hf_checkpoint(tmp.path("hf"), tmp.path("back"));
  EXPECT_EQ(imported.tensors, static_cast<int64_t>(model.params().size()));
  EXPECT_EQ(imported.shards, exported.shards);
  EXPECT_TRUE(imported.notes.empty());
  SafetensorsFile back = SafetensorsFile::open(tmp.path("back/model.safetensors"));
  EXPECT_EQ(back.names().size(), model.params().size());
  for (auto& p : model.params().all()) {
    ASSERT_EQ(back.info(p->name).dtype, DType::F32);
    const std::vector<float> got = back.read_as<float>(p->name);
    ASSERT_EQ(got.size(), p->value.size());
    EXPECT_EQ(std::memcmp(got.data(), p->value.data(), got.size() * sizeof(float)), 0) << p->name;
  }
  // The imported checkpoint is a frugal checkpoint: its config and weights load.
  Transformer<float> reloaded(frugal_checkpoint_model_config(tmp.path("back")));
  load_params(reloaded.params(), tmp.path("back/model.safetensors"));
  EXPECT_EQ(load_config(tmp.path("back/frugal.toml")).model, cfg);
}

TEST(HfConvert, Fp8ExportImportEqualsDequantizedQuantization) {
  TempDir tmp("hfconv");
  const ModelConfig cfg = fp8_config();
  Transformer<float> model(cfg);
  testing::randomize_model(model, 5, /*bf16_values=*/false);
  testing::write_frugal_checkpoint(tmp.path("ckpt"), model);
  HfExportOptions options;
  options.fp8 = true;
  options.shard_bytes = 64 << 10;
  const ConvertSummary exported = export_hf_checkpoint(tmp.path("ckpt"), tmp.path("hf"), options);
  int64_t fp8_expected = 0;
  for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) fp8_expected += spec.fp8;
  EXPECT_EQ(exported.fp8_tensors, fp8_expected);

  const nlohmann::json config = nlohmann::json::parse(testing::read_bytes(tmp.path("hf/config.json")));
  EXPECT_EQ(config.at("quantization_config").at("quant_method"), "fp8");
  EXPECT_EQ(config.at("quantization_config").at("weight_block_size"), nlohmann::json({128, 128}));
  const nlohmann::json map = nlohmann::json::parse(
      testing::read_bytes(tmp.path("hf/model.safetensors.index.json"))).at("weight_map");

  HfCheckpointReader reader(tmp.path("hf"));
  EXPECT_EQ(reader.fp8_tensor_count(), fp8_expected);
  int64_t multi_block = 0;
  for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) {
    const std::string file = map.at(spec.name);
    SafetensorsFile shard = SafetensorsFile::open(tmp.path("hf/" + file));
    const Param<float>& p = model.params().get(spec.name);
    if (!spec.fp8) {
      EXPECT_EQ(shard.info(spec.name).dtype, spec.kind == ParamKind::Buffer ? DType::F32 : DType::BF16);
      continue;
    }
    // Weight and scale in one shard, DeepSeek's dtypes and scale shape.
    const std::string scale = fp8_scale_name(spec.name);
    ASSERT_EQ(map.at(scale), file) << scale;
    EXPECT_EQ(shard.info(spec.name).dtype, DType::F8_E4M3);
    EXPECT_EQ(shard.info(scale).dtype, DType::F32);
    const int64_t rows = spec.shape[0], cols = spec.shape[1];
    const std::vector<int64_t> scale_shape = {(rows + 127) / 128, (cols + 127) / 128};
    EXPECT_EQ(shard.info(scale).shape, scale_shape) << spec.name;
    multi_block += scale_shape[0] * scale_shape[1] > 1;
    // The stored codes and scales are cpu::quantize_weight_128x128 of the F32 weight.
    std::vector<uint8_t> codes(p.value.size());
    std::vector<float> scales(static_cast<size_t>(scale_shape[0] * scale_shape[1]));
    cpu::quantize_weight_128x128(codes.data(), scales.data(), p.data(), rows, cols, false);
    EXPECT_EQ(std::memcmp(shard.data(spec.name), codes.data(), codes.size()), 0) << spec.name;
    EXPECT_EQ(shard.read_as<float>(scale), scales) << spec.name;
  }
  EXPECT_GT(multi_block, 3);  // partial edge blocks are exercised

  import_hf_checkpoint(tmp.path("hf"), tmp.path("back"));
  SafetensorsFile back = SafetensorsFile::open(tmp.path("back/model.safetensors"));
  for (const HfTensorSpec& spec : hf_tensor_layout(cfg)) {
    const Param<float>& p = model.params().get(spec.name);
    const std::vector<float> got = back.read_as<float>(spec.name);
    if (!spec.fp8) {
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], spec.kind == ParamKind::Buffer ? p.value[i] : round_to_bf16(p.value[i]))
            << spec.name;
      continue;
    }
    const int64_t rows = spec.shape[0], cols = spec.shape[1];
    std::vector<uint8_t> codes(p.value.size());
    std::vector<float> scales(static_cast<size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
    std::vector<float> expected(p.value.size());
    cpu::quantize_weight_128x128(codes.data(), scales.data(), p.data(), rows, cols, false);
    cpu::dequantize_weight_128x128(expected.data(), codes.data(), scales.data(), rows, cols);
    EXPECT_EQ(got, expected) << spec.name;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float w = p.value[r * cols + c], scale = scales[(r / 128) * ((cols + 127) / 128) + c / 128];
        // E4M3: 3 mantissa bits (relative step 2^-3, rounding error 2^-4); subnormal step 2^-9.
        ASSERT_LE(std::fabs(got[r * cols + c] - w), std::fabs(w) / 16 + scale * 0x1p-10f * 1.0001f)
            << spec.name << " [" << r << ", " << c << "]";
      }
  }
}

TEST(HfConvert, ReadsFusedExpertsAndFilesWithoutMtp) {
  TempDir tmp("hfconv");
  const ModelConfig cfg = testing::tiny_model_config();
  Transformer<float> model(cfg);
  testing::randomize_model(model, 3, true);
  testing::RawTensors tensors = testing::hf_tensors_of(model);
  // transformers drops the MTP layer; fuse layer 1's experts as transformers 5 holds them.
  for (auto it = tensors.begin(); it != tensors.end();)
    it = it->first.rfind(mtp_layer_prefix(cfg, 0), 0) == 0 ? tensors.erase(it) : std::next(it);
  const int64_t E = cfg.n_routed_experts, I = cfg.moe_intermediate_size, H = cfg.hidden_size;
  std::vector<float> gate_up, down;
  for (int64_t e = 0; e < E; ++e) {
    const std::string prefix = "model.layers.1.mlp.experts." + std::to_string(e);
    for (const char* part : {".gate_proj.weight", ".up_proj.weight"}) {
      const auto& v = model.params().get(prefix + part).value;
      gate_up.insert(gate_up.end(), v.begin(), v.end());
      tensors.erase(prefix + part);
    }
    const auto& v = model.params().get(prefix + ".down_proj.weight").value;
    down.insert(down.end(), v.begin(), v.end());
    tensors.erase(prefix + ".down_proj.weight");
  }
  tensors["model.layers.1.mlp.experts.gate_up_proj"] =
      testing::raw_from_floats(DType::BF16, {E, 2 * I, H}, gate_up.data());
  tensors["model.layers.1.mlp.experts.down_proj"] =
      testing::raw_from_floats(DType::BF16, {E, H, I}, down.data());
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] =
      testing::raw_from_floats(DType::F32, {1}, gate_up.data());
  testing::write_hf_dir(tmp.path("hf"), model_config_to_hf_json(cfg), tensors, 3);

  HfCheckpointReader reader(tmp.path("hf"));
  EXPECT_EQ(reader.config().num_nextn_predict_layers, 0);
  ASSERT_EQ(reader.notes().size(), 2u);
  EXPECT_NE(reader.notes()[0].find("num_nextn_predict_layers"), std::string::npos);
  ModelConfig no_mtp = cfg;
  no_mtp.num_nextn_predict_layers = 0;
  Transformer<float> loaded(no_mtp);
  load_hf_weights(reader, loaded);
  for (auto& p : loaded.params().all())
    EXPECT_EQ(p->value, model.params().get(p->name).value) << p->name;
}

class HfHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<Transformer<float>>(cfg_);
    testing::randomize_model(*model_, 7, true);
    tensors_ = testing::hf_tensors_of(*model_);
    config_ = model_config_to_hf_json(cfg_);
  }
  // Writes the (edited) checkpoint and returns the error of importing it ("" if none); checks
  // that a failed import leaves no output behind.
  std::string import_error(int shards = 2) {
    const fs::path hf = tmp_.path("hf" + std::to_string(++count_));
    testing::write_hf_dir(hf, config_, tensors_, shards);
    const fs::path out = tmp_.path("out" + std::to_string(count_));
    const std::string message = error_message([&] { import_hf_checkpoint(hf.string(), out.string()); });
    if (!message.empty()) {
      EXPECT_FALSE(fs::exists(out)) << message;
      for (auto& entry : fs::directory_iterator(tmp_.path()))
        EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos);
    }
    return message;
  }
  const ModelConfig cfg_ = testing::tiny_model_config();
  std::unique_ptr<Transformer<float>> model_;
  testing::RawTensors tensors_;
  nlohmann::json config_;
  TempDir tmp_{"hfhostile"};
  int count_ = 0;
};

#define EXPECT_ERROR_HAS(message, ...)                                           \
  do {                                                                           \
    const std::string m_ = (message);                                            \
    EXPECT_FALSE(m_.empty()) << "no error";                                      \
    for (const char* needle : {__VA_ARGS__})                                     \
      EXPECT_NE(m_.find(needle), std::string::npos) << needle << " not in: " << m_; \
  } while (0)

TEST_F(HfHostile, GoodFilesImport) { EXPECT_EQ(import_error(), ""); }

TEST_F(HfHostile, MissingTensor) {
  tensors_.erase("model.layers.1.self_attn.kv_b_proj.weight");
  EXPECT_ERROR_HAS(import_error(), "model.layers.1.self_attn.kv_b_proj.weight", "missing");
}

TEST_F(HfHostile, PartialMtpLayerIsMissingTensor) {
  tensors_.erase("model.layers.2.eh_proj.weight");
  EXPECT_ERROR_HAS(import_error(), "model.layers.2.eh_proj.weight", "missing");
}

TEST_F(HfHostile, WrongShape) {
  auto& t = tensors_.at("model.layers.0.mlp.up_proj.weight");
  t.shape = {t.shape[1], t.shape[0]};
  EXPECT_ERROR_HAS(import_error(), "model.layers.0.mlp.up_proj.weight", "shape", "[12, 8]");
}

TEST_F(HfHostile, WrongDtype) {
  auto& t = tensors_.at("model.norm.weight");
  t.dtype = DType::I16;  // same byte size as BF16
  EXPECT_ERROR_HAS(import_error(), "model.norm.weight", "I16");
}

TEST_F(HfHostile, Fp8WithoutScale) {
  auto& t = tensors_.at("model.layers.1.self_attn.o_proj.weight");
  t = testing::raw_from_floats(DType::F8_E4M3, t.shape,
                               model_->params().get("model.layers.1.self_attn.o_proj.weight").data());
  EXPECT_ERROR_HAS(import_error(), "model.layers.1.self_attn.o_proj.weight_scale_inv", "missing");
}

TEST_F(HfHostile, Fp8ScaleWithWrongShape) {
  auto& t = tensors_.at("model.layers.1.self_attn.o_proj.weight");
  t = testing::raw_from_floats(DType::F8_E4M3, t.shape,
                               model_->params().get("model.layers.1.self_attn.o_proj.weight").data());
  const float scales[2] = {1, 1};
  tensors_["model.layers.1.self_attn.o_proj.weight_scale_inv"] =
      testing::raw_from_floats(DType::F32, {1, 2}, scales);
  EXPECT_ERROR_HAS(import_error(), "o_proj.weight_scale_inv", "[1, 2]", "[1, 1]");
}

TEST_F(HfHostile, ScaleOfNonFp8Weight) {
  const float one = 1;
  tensors_["model.layers.1.self_attn.o_proj.weight_scale_inv"] =
      testing::raw_from_floats(DType::F32, {1, 1}, &one);
  EXPECT_ERROR_HAS(import_error(), "model.layers.1.self_attn.o_proj.weight", "not F8_E4M3");
  tensors_.erase("model.layers.1.self_attn.o_proj.weight_scale_inv");
  tensors_["model.layers.0.bogus.weight_scale_inv"] = testing::raw_from_floats(DType::F32, {1, 1}, &one);
  EXPECT_ERROR_HAS(import_error(), "model.layers.0.bogus.weight_scale_inv", "missing");
}

TEST_F(HfHostile, UnknownTensor) {
  const float one = 1;
  tensors_["model.layers.0.self_attn.extra.weight"] = testing::raw_from_floats(DType::BF16, {1}, &one);
  EXPECT_ERROR_HAS(import_error(), "model.layers.0.self_attn.extra.weight", "does not belong");
}

TEST_F(HfHostile, UnknownModelType) {
  config_["model_type"] = "llama";
  EXPECT_ERROR_HAS(import_error(), "config.json", "llama");
  config_.erase("model_type");
  EXPECT_ERROR_HAS(import_error(), "config.json", "model_type");
}

TEST_F(HfHostile, UnknownQuantization) {
  config_["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_ERROR_HAS(import_error(), "config.json", "gptq");
  config_["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {64, 64}}};
  EXPECT_ERROR_HAS(import_error(), "config.json", "weight_block_size");
}

TEST_F(HfHostile, IndexProblems) {
  const fs::path hf = tmp_.path("indexed");
  testing::write_hf_dir(hf, config_, tensors_, 2);
  const fs::path index_path = hf / "model.safetensors.index.json";
  const nlohmann::json good = nlohmann::json::parse(testing::read_bytes(index_path));
  auto error_with = [&](const nlohmann::json& index) {
    write_file_atomic(index_path.string(), index.dump());
    return error_message([&] { HfCheckpointReader reader(hf.string()); });
  };
  nlohmann::json bad = good;
  bad["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
  EXPECT_ERROR_HAS(error_with(bad), "model.safetensors.index.json", "model-00009-of-00009.safetensors",
                   "does not exist");
  bad = good;
  bad["weight_map"]["model.norm.weight"] = "../escape.safetensors";
  EXPECT_ERROR_HAS(error_with(bad), "model.norm.weight", "../escape.safetensors");
  bad = good;  // the tensor is listed in the other shard
  const std::string file = good["weight_map"]["model.norm.weight"];
  bad["weight_map"]["model.norm.weight"] = file == "part-0.safetensors" ? "part-1.safetensors"
                                                                         : "part-0.safetensors";
  EXPECT_ERROR_HAS(error_with(bad), "model.norm.weight", "no such tensor");
  bad = good;
  bad["weight_map"].erase("model.norm.weight");
  EXPECT_ERROR_HAS(error_with(bad), "model.norm.weight", "not listed");
  EXPECT_ERROR_HAS(error_with(nlohmann::json{{"weights", 1}}), "weight_map");
  write_file_atomic(index_path.string(), "{not json");
  EXPECT_ERROR_HAS(error_message([&] { HfCheckpointReader reader(hf.string()); }),
                   "model.safetensors.index.json", "malformed");
  error_with(good);
  fs::remove(hf / "part-1.safetensors");
  EXPECT_ERROR_HAS(error_message([&] { HfCheckpointReader reader(hf.string()); }), "part-1.safetensors");
}

TEST_F(HfHostile, TruncatedShard) {
  const fs::path hf = tmp_.path("trunc");
  testing::write_hf_dir(hf, config_, tensors_, 0);
  const std::string bytes = testing::read_bytes(hf / "model.safetensors");
  write_file_atomic((hf / "model.safetensors").string(), bytes.substr(0, bytes.size() - 100));
  EXPECT_ERROR_HAS(error_message([&] { HfCheckpointReader reader(hf.string()); }), "model.safetensors",
                   "truncated");
}

TEST_F(HfHostile, ExistingOutputIsRefusedAndKept) {
  const fs::path hf = tmp_.path("good");
  testing::write_hf_dir(hf, config_, tensors_, 0);
  const fs::path out = tmp_.path("taken");
  fs::create_directories(out);
  write_file_atomic((out / "keep.txt").string(), "mine");
  EXPECT_ERROR_HAS(error_message([&] { import_hf_checkpoint(hf.string(), out.string()); }),
                   "taken", "not an empty directory");
  EXPECT_EQ(testing::read_bytes(out / "keep.txt"), "mine");
  // An empty directory is fine.
  fs::create_directories(tmp_.path("empty"));
  EXPECT_EQ(error_message([&] { import_hf_checkpoint(hf.string(), tmp_.path("empty/")); }), "");
  EXPECT_TRUE(fs::exists(tmp_.path("empty/model.safetensors")));
}

TEST(HfExport, RefusesForeignTensorsInTheCheckpoint) {
  TempDir tmp("hfexport");
  const ModelConfig cfg = testing::tiny_model_config();
  Transformer<float> model(cfg);
  testing::randomize_model(model, 1, true);
  testing::write_frugal_checkpoint(tmp.path("ckpt"), model);
  ModelConfig other = cfg;
  other.hidden_size = 16;
  Config config;
  config.model = other;
  config.train.seq_len = 32;
  config.data.tokenizer = "none";
  write_file_atomic(tmp.path("ckpt/frugal.toml"), config_to_toml(config));
  const std::string message =
      error_message([&] { export_hf_checkpoint(tmp.path("ckpt"), tmp.path("hf")); });
  EXPECT_ERROR_HAS(message, "model.safetensors", "model.embed_tokens.weight", "shape");
  EXPECT_FALSE(fs::exists(tmp.path("hf")));
}

}  // namespace
}  // namespace frugal
