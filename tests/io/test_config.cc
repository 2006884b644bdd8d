// Configuration loading: presets, overrides, errors that name the file and key, Hugging Face
// config.json parsing (V3 and V2-Lite style), TOML and JSON round trips, the settings table.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "io/config_io.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kPresets[] = {"tiny",        "small",   "bench-1b",
                                 "bench-v3-slice", "v2-lite-16b", "v3-671b"};

std::string preset_path(const std::string& name) {
  return std::string(FRUGAL_SOURCE_DIR) + "/configs/" + name + ".toml";
}

// A fresh folder per test.
fs::path temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::temp_directory_path() /
                 fmt::format("frugal_config_{}_{}_{}", getpid(), info->test_suite_name(),
                             info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path.string();
}

// The message of the frugal::Error that `f` throws, or a marker when it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

#define EXPECT_ERROR_HAS(message, text) \
  EXPECT_NE((message).find(text), std::string::npos) << "message: " << (message)

TEST(Presets, EveryPresetLoadsAndValidates) {
  for (const char* name : kPresets) {
    SCOPED_TRACE(name);
    Config config;
    EXPECT_NO_THROW(config = load_config(preset_path(name)));
    EXPECT_NO_THROW(validate(config));
  }
}

TEST(Presets, Bench1bHasTheRequestedShape) {
  const ModelConfig m = load_config(preset_path("bench-1b")).model;
  EXPECT_EQ(m.vocab_size, 32768);
  EXPECT_EQ(m.hidden_size, 1024);
  EXPECT_EQ(m.num_hidden_layers, 12);
  EXPECT_EQ(m.first_k_dense_replace, 1);
  EXPECT_EQ(m.intermediate_size, 2816);
  EXPECT_EQ(m.n_routed_experts, 64);
  EXPECT_EQ(m.moe_intermediate_size, 384);
  EXPECT_EQ(m.num_experts_per_tok, 6);
  EXPECT_EQ(m.n_shared_experts, 1);
  EXPECT_EQ(m.n_group, 8);
  EXPECT_EQ(m.topk_group, 4);
  EXPECT_EQ(m.scoring_func, "sigmoid");
  EXPECT_EQ(m.routed_scaling_factor, 2.5);
  EXPECT_EQ(m.num_attention_heads, 16);
  EXPECT_EQ(m.q_lora_rank, 512);
  EXPECT_EQ(m.kv_lora_rank, 256);
  EXPECT_EQ(m.qk_nope_head_dim, 128);
  EXPECT_EQ(m.qk_rope_head_dim, 64);
  EXPECT_EQ(m.v_head_dim, 128);
  EXPECT_EQ(m.num_nextn_predict_layers, 1);
  EXPECT_EQ(load_config(preset_path("bench-1b")).train.seq_len, 4096);
}

// bench-v3-slice keeps every per-layer width of the V3 preset; only the depth, the routed expert
// count and the MTP module are cut.
TEST(Presets, V3SliceHasV3sLayerWidths) {
  const ModelConfig slice = load_config(preset_path("bench-v3-slice")).model;
  const ModelConfig v3 = load_config(preset_path("v3-671b")).model;
  EXPECT_EQ(slice.hidden_size, v3.hidden_size);
  EXPECT_EQ(slice.intermediate_size, v3.intermediate_size);
  EXPECT_EQ(slice.moe_intermediate_size, v3.moe_intermediate_size);
  EXPECT_EQ(slice.num_attention_heads, v3.num_attention_heads);
  EXPECT_EQ(slice.q_lora_rank, v3.q_lora_rank);
  EXPECT_EQ(slice.kv_lora_rank, v3.kv_lora_rank);
  EXPECT_EQ(slice.qk_nope_head_dim, v3.qk_nope_head_dim);
  EXPECT_EQ(slice.qk_rope_head_dim, v3.qk_rope_head_dim);
  EXPECT_EQ(slice.v_head_dim, v3.v_head_dim);
  EXPECT_EQ(slice.num_experts_per_tok, v3.num_experts_per_tok);
  EXPECT_EQ(slice.n_shared_experts, v3.n_shared_experts);
  EXPECT_EQ(slice.n_group, v3.n_group);
  EXPECT_EQ(slice.topk_group, v3.topk_group);
  EXPECT_EQ(slice.scoring_func, v3.scoring_func);
  EXPECT_EQ(slice.routed_scaling_factor, v3.routed_scaling_factor);
  EXPECT_EQ(slice.first_k_dense_replace, 1);
  EXPECT_EQ(slice.num_hidden_layers, 3);
  EXPECT_EQ(slice.n_routed_experts, 32);
  EXPECT_EQ(slice.num_nextn_predict_layers, 0);
}

TEST(Presets, TinyIsTinyAndByteLevel) {
  const Config c = load_config(preset_path("tiny"));
  EXPECT_EQ(c.model.vocab_size, 260);
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.num_hidden_layers, 2);
  EXPECT_EQ(c.model.n_routed_experts, 8);
  EXPECT_EQ(c.model.rope_scaling.type, "none");
  EXPECT_EQ(c.train.seq_len, 64);
  EXPECT_EQ(c.data.tokenizer, "bytes");
  EXPECT_TRUE(c.model.is_moe_layer(1));
  EXPECT_FALSE(c.model.is_moe_layer(0));
}

TEST(Presets, V3CarriesTheSpecSchedule) {
  const Config c = load_config(preset_path("v3-671b"));
  EXPECT_EQ(c.optim.lr, 2.2e-4);
  EXPECT_EQ(c.schedule.warmup_steps, 2000);
  EXPECT_EQ(c.schedule.min_lr, 2.2e-5);
  EXPECT_EQ(c.schedule.final_lr, 7.3e-6);
  EXPECT_EQ(c.batch_ramp.start_sequences, 3072);
  EXPECT_EQ(c.train.batch_sequences, 15360);
  EXPECT_EQ(c.batch_ramp.ramp_tokens, 469'000'000'000);
  EXPECT_EQ(c.train.init_std, 0.006);
  EXPECT_EQ(c.train.balance_alpha, 1e-4);
  EXPECT_EQ(c.optim.beta2, 0.95);
  ASSERT_EQ(c.train.mtp_weight.size(), 2u);
  EXPECT_EQ(c.train.mtp_weight[1].start, c.schedule.decay_start);  // lambda drops at 10T tokens
  ASSERT_EQ(c.train.bias_update_speed.size(), 2u);
  EXPECT_EQ(c.train.bias_update_speed[1].start, c.schedule.decay_end);  // gamma 0 from 14.3T
  EXPECT_EQ(c.train.bias_update_speed[1].value, 0.0);
}

// ---- Hugging Face config.json -----------------------------------------------------------------

// DeepSeek-V3's config.json (spec §1.3), with the extra keys HF configs carry.
json v3_hf_json() {
  return json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
    "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "head_dim": 64, "qk_head_dim": 192,
    "rope_interleave": true,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "seq_aux": true, "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
    "v_head_dim": 128, "vocab_size": 129280, "some_future_key": {"x": 1}
  })");
}

// DeepSeek-V2-Lite's config.json: null q_lora_rank, softmax greedy routing, YaRN with mscale 0.707.
json v2_lite_hf_json() {
  return json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "attention_bias": false, "attention_dropout": 0.0, "aux_loss_alpha": 0.001,
    "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": false, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "pretraining_tp": 1, "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": true,
    "v_head_dim": 128, "vocab_size": 102400
  })");
}

TEST(HfConfig, V3JsonMatchesThePreset) {
  const ModelConfig m = model_config_from_json(v3_hf_json(), "v3/config.json");
  EXPECT_EQ(m, load_config(preset_path("v3-671b")).model);
  EXPECT_EQ(m.q_lora_rank, 1536);
  EXPECT_EQ(m.rope_scaling.type, "yarn");
  EXPECT_EQ(m.rope_scaling.factor, 40.0);
  EXPECT_EQ(m.rope_scaling.mscale_all_dim, 1.0);
}

TEST(HfConfig, V2LiteJsonMatchesThePreset) {
  const ModelConfig m = model_config_from_json(v2_lite_hf_json(), "v2-lite/config.json");
  EXPECT_EQ(m, load_config(preset_path("v2-lite-16b")).model);
  EXPECT_EQ(m.q_lora_rank, 0);
  EXPECT_EQ(m.num_nextn_predict_layers, 0);  // absent in V2 configs
  EXPECT_EQ(m.rope_scaling.mscale, 0.707);
  EXPECT_EQ(m.rope_scaling.mscale_all_dim, 0.707);
  EXPECT_EQ(m.topk_method, "greedy");
  EXPECT_FALSE(m.norm_topk_prob);
}

TEST(HfConfig, V2DefaultsAndNullsApplyWhenKeysAreMissing) {
  json j = v2_lite_hf_json();
  for (const char* key : {"scoring_func", "topk_method", "norm_topk_prob", "routed_scaling_factor"})
    j.erase(key);
  j["n_group"] = nullptr;
  j["topk_group"] = nullptr;
  j["rope_scaling"] = nullptr;
  const ModelConfig m = model_config_from_json(j, "cfg.json");
  EXPECT_EQ(m.scoring_func, "softmax");
  EXPECT_EQ(m.topk_method, "greedy");
  EXPECT_FALSE(m.norm_topk_prob);
  EXPECT_EQ(m.routed_scaling_factor, 1.0);
  EXPECT_EQ(m.n_group, 1);
  EXPECT_EQ(m.topk_group, 1);
  EXPECT_EQ(m.rope_scaling.type, "none");
}

TEST(HfConfig, AcceptsTransformers5RopeParameters) {
  json j = v3_hf_json();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "yarn"},  {"factor", 40.0},   {"beta_fast", 32.0},
                          {"beta_slow", 1.0},     {"mscale", 1.0},    {"mscale_all_dim", 1.0},
                          {"rope_theta", 50000.0}, {"original_max_position_embeddings", 4096}};
  const ModelConfig m = model_config_from_json(j, "cfg.json");
  EXPECT_EQ(m.rope_scaling.type, "yarn");
  EXPECT_EQ(m.rope_scaling.factor, 40.0);
  EXPECT_EQ(m.rope_theta, 50000.0);

  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  EXPECT_EQ(model_config_from_json(j, "cfg.json").rope_scaling.type, "none");
}

TEST(HfConfig, RejectsBadConfigsNamingFileAndKey) {
  json j = v3_hf_json();
  j["model_type"] = "llama";
  std::string message = error_of([&] { model_config_from_json(j, "dir/config.json"); });
  EXPECT_ERROR_HAS(message, "dir/config.json");
  EXPECT_ERROR_HAS(message, "llama");

  j = v3_hf_json();
  j["hidden_size"] = "big";
  message = error_of([&] { model_config_from_json(j, "dir/config.json"); });
  EXPECT_ERROR_HAS(message, "dir/config.json: hidden_size must be an integer");

  j = v3_hf_json();
  j["rope_scaling"]["factor"] = "forty";
  message = error_of([&] { model_config_from_json(j, "c.json"); });
  EXPECT_ERROR_HAS(message, "rope_scaling.factor must be a number");

  j = v3_hf_json();
  j["rope_scaling"]["type"] = "linear";
  EXPECT_ERROR_HAS(error_of([&] { model_config_from_json(j, "c.json"); }), "linear");

  j = v3_hf_json();
  j["num_experts_per_tok"] = 300;  // impossible: validated
  message = error_of([&] { model_config_from_json(j, "c.json"); });
  EXPECT_ERROR_HAS(message, "c.json: model.num_experts_per_tok = 300 exceeds");

  j = v3_hf_json();
  j["vocab_size"] = 18446744073709551615ull;  // does not fit int64
  EXPECT_ERROR_HAS(error_of([&] { model_config_from_json(j, "c.json"); }),
                   "vocab_size must be an integer");
  j = v3_hf_json();
  j["vocab_size"] = 129280.0;  // an integral float is accepted
  EXPECT_EQ(model_config_from_json(j, "c.json").vocab_size, 129280);
  j["eos_token_id"] = json::array({1, 2});  // a list of end tokens: the first is eos
  EXPECT_EQ(model_config_from_json(j, "c.json").eos_token_id, 1);

  j = v3_hf_json();
  j.erase("model_type");
  EXPECT_ERROR_HAS(error_of([&] { model_config_from_json(j, "c.json"); }), "model_type");
}

TEST(HfConfig, FileErrorsNameTheFile) {
  const fs::path dir = temp_dir();
  const std::string bad = write_file(dir / "config.json", "{\"model_type\": \"deepseek_v3\",");
  EXPECT_ERROR_HAS(error_of([&] { load_hf_config(bad); }), "config.json: malformed JSON");
  EXPECT_ERROR_HAS(error_of([&] { load_hf_config((dir / "missing.json").string()); }),
                   "missing.json");
}

TEST(HfConfig, WrittenJsonHasHfShapeAndReadsBack) {
  for (const char* name : kPresets) {
    SCOPED_TRACE(name);
    const ModelConfig m = load_config(preset_path(name)).model;
    const json j = model_config_to_hf_json(m);
    EXPECT_EQ(model_config_from_json(json::parse(j.dump()), "written.json"), m);
    EXPECT_EQ(j["model_type"], m.model_type);
  }
  const json v3 = model_config_to_hf_json(load_config(preset_path("v3-671b")).model);
  EXPECT_EQ(v3["architectures"], json::array({"DeepseekV3ForCausalLM"}));
  EXPECT_EQ(v3["q_lora_rank"], 1536);
  EXPECT_EQ(v3["rope_scaling"]["type"], "yarn");
  EXPECT_EQ(v3["rope_scaling"]["factor"], 40.0);
  const json lite = model_config_to_hf_json(load_config(preset_path("v2-lite-16b")).model);
  EXPECT_TRUE(lite["q_lora_rank"].is_null());
  const json tiny = model_config_to_hf_json(load_config(preset_path("tiny")).model);
  EXPECT_TRUE(tiny["rope_scaling"].is_null());
  EXPECT_EQ(tiny["n_routed_experts"], 8);
}

TEST(HfConfig, TomlHfConfigResolvesRelativeAndTomlKeysOverride) {
  const fs::path dir = temp_dir();
  fs::create_directories(dir / "hf");
  write_file(dir / "hf" / "config.json", v2_lite_hf_json().dump(2));
  const std::string toml = write_file(dir / "run.toml", R"(
[model]
hf_config = "hf/config.json"
num_hidden_layers = 4

[train]
seq_len = 128
)");
  const Config c = load_config(toml);
  EXPECT_EQ(c.model.model_type, "deepseek_v2");
  EXPECT_EQ(c.model.hidden_size, 2048);
  EXPECT_EQ(c.model.q_lora_rank, 0);
  EXPECT_EQ(c.model.num_hidden_layers, 4);  // the TOML key wins over the JSON
  EXPECT_EQ(c.train.seq_len, 128);

  // An override replaces the file's hf_config (its path taken as given, quotes allowed).
  write_file(dir / "v3.json", v3_hf_json().dump());
  const std::string v3_path = (dir / "v3.json").string();
  const Config o = load_config(toml, {"model.hf_config=\"" + v3_path + "\""});
  EXPECT_EQ(o.model.model_type, "deepseek_v3");
  EXPECT_EQ(o.model.hidden_size, 7168);
  EXPECT_EQ(o.model.num_hidden_layers, 4);

  // A missing hf_config names the path.
  const std::string broken = write_file(dir / "broken.toml", "[model]\nhf_config = \"nope.json\"\n");
  EXPECT_ERROR_HAS(error_of([&] { load_config(broken); }), "nope.json");
}

// ---- overrides --------------------------------------------------------------------------------

TEST(Overrides, EachTypeIsParsedFromTheField) {
  const Config c = load_config(
      preset_path("tiny"),
      {"train.steps=42", "optim.lr=3e-4", "optim.grad_clip=2", "model.norm_topk_prob=false",
       "train.out_dir=runs/x y", "data.tokenizer=\"bytes\"", "train.seed=99",
       "train.mtp_weight=[[0, 0.3], [100, 0.1]]", "train.bias_update_speed=0.002",
       "--model.rope_scaling.type=yarn", "model.rope_scaling.factor=4",
       "batch_ramp.ramp_tokens=1e6", "batch_ramp.start_sequences=4"});
  EXPECT_EQ(c.train.steps, 42);
  EXPECT_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.optim.grad_clip, 2.0);
  EXPECT_FALSE(c.model.norm_topk_prob);
  EXPECT_EQ(c.train.out_dir, "runs/x y");
  EXPECT_EQ(c.data.tokenizer, "bytes");
  EXPECT_EQ(c.train.seed, 99u);
  ASSERT_EQ(c.train.mtp_weight.size(), 2u);
  EXPECT_EQ(c.train.mtp_weight[1].start, 100);
  EXPECT_EQ(c.train.mtp_weight[1].value, 0.1);
  ASSERT_EQ(c.train.bias_update_speed.size(), 1u);
  EXPECT_EQ(c.train.bias_update_speed[0].value, 0.002);
  EXPECT_EQ(c.model.rope_scaling.type, "yarn");
  EXPECT_EQ(c.model.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.batch_ramp.ramp_tokens, 1'000'000);
}

TEST(Overrides, LaterOverridesWin) {
  const Config c = load_config(preset_path("tiny"), {"optim.lr=1", "optim.lr=0.5"});
  EXPECT_EQ(c.optim.lr, 0.5);
}

TEST(Overrides, BadOverridesNameTheKey) {
  const std::string tiny = preset_path("tiny");
  std::string m = error_of([&] { load_config(tiny, {"train.lr=3e-4"}); });
  EXPECT_ERROR_HAS(m, "unknown key train.lr");
  m = error_of([&] { load_config(tiny, {"model.hiden_size=3"}); });
  EXPECT_ERROR_HAS(m, "did you mean model.hidden_size?");
  m = error_of([&] { load_config(tiny, {"optim.lr=abc"}); });
  EXPECT_ERROR_HAS(m, "malformed value 'abc' for optim.lr (expected a number)");
  m = error_of([&] { load_config(tiny, {"model.hidden_size=1.5"}); });
  EXPECT_ERROR_HAS(m, "model.hidden_size must be an integer, got float 1.5");
  m = error_of([&] { load_config(tiny, {"model.norm_topk_prob=1"}); });
  EXPECT_ERROR_HAS(m, "model.norm_topk_prob must be true or false");
  m = error_of([&] { load_config(tiny, {"train.seed=-1"}); });
  EXPECT_ERROR_HAS(m, "train.seed must be a non-negative integer");
  m = error_of([&] { load_config(tiny, {"train.mtp_weight=[[0]]"}); });
  EXPECT_ERROR_HAS(m, "train.mtp_weight must be a step schedule");
  m = error_of([&] { load_config(tiny, {"optim.lr"}); });
  EXPECT_ERROR_HAS(m, "override 'optim.lr': expected section.key=value");
  m = error_of([&] { load_config(tiny, {"model.vocab_size=5 6"}); });
  EXPECT_ERROR_HAS(m, "malformed value");
}

// ---- TOML file errors -------------------------------------------------------------------------

TEST(TomlErrors, NameTheFileKeyAndLine) {
  const fs::path dir = temp_dir();
  const std::string unknown_key = write_file(dir / "a.toml", "[model]\nhidden_size = 64\nhiden = 3\n");
  std::string m = error_of([&] { load_config(unknown_key); });
  EXPECT_ERROR_HAS(m, "a.toml:3:1: unknown key model.hiden");

  const std::string unknown_section = write_file(dir / "b.toml", "[modle]\nhidden_size = 64\n");
  m = error_of([&] { load_config(unknown_section); });
  EXPECT_ERROR_HAS(m, "b.toml:1:2: unknown section [modle]");

  const std::string wrong_type = write_file(dir / "c.toml", "[train]\nseq_len = \"long\"\n");
  m = error_of([&] { load_config(wrong_type); });
  EXPECT_ERROR_HAS(m, "c.toml:2:11: train.seq_len must be an integer, got string \"long\"");

  const std::string malformed = write_file(dir / "d.toml", "[train]\nseq_len = = 4\n");
  m = error_of([&] { load_config(malformed); });
  EXPECT_ERROR_HAS(m, "d.toml:2:");
  EXPECT_ERROR_HAS(m, "malformed TOML");

  const std::string top_level = write_file(dir / "e.toml", "lr = 1\n");
  m = error_of([&] { load_config(top_level); });
  EXPECT_ERROR_HAS(m, "unknown section [lr]");

  const std::string not_a_table = write_file(dir / "f.toml", "model = 3\n");
  m = error_of([&] { load_config(not_a_table); });
  EXPECT_ERROR_HAS(m, "model must be a section");

  const std::string unknown_sub = write_file(dir / "g.toml", "[model.rope_scaling]\nfactr = 2\n");
  m = error_of([&] { load_config(unknown_sub); });
  EXPECT_ERROR_HAS(m, "unknown key model.rope_scaling.factr");

  const std::string impossible = write_file(dir / "h.toml", "[model]\nn_group = 7\n");
  m = error_of([&] { load_config(impossible); });
  EXPECT_ERROR_HAS(m, "h.toml: model.n_group = 7 does not divide model.n_routed_experts = 256");

  EXPECT_ERROR_HAS(error_of([&] { load_config((dir / "none.toml").string()); }),
                   "none.toml: cannot read config file");
}

TEST(TomlErrors, ScheduleFormsAndIntegralFloats) {
  const fs::path dir = temp_dir();
  const std::string path = write_file(dir / "s.toml", R"(
[train]
mtp_weight = [{start = 0, value = 0.3}, {start = 10, value = 0.1}]
bias_update_speed = [[0, 1e-3], [2e1, 0]]
[batch_ramp]
ramp_tokens = 4.69e11
start_sequences = 1
)");
  const Config c = load_config(path);
  ASSERT_EQ(c.train.mtp_weight.size(), 2u);
  EXPECT_EQ(c.train.mtp_weight[1].start, 10);
  EXPECT_EQ(c.train.bias_update_speed[1].start, 20);
  EXPECT_EQ(c.train.bias_update_speed[1].value, 0.0);
  EXPECT_EQ(c.batch_ramp.ramp_tokens, 469'000'000'000);
}

// ---- impossible settings ----------------------------------------------------------------------

struct BadSetting {
  std::vector<std::string> overrides;
  std::string expected;  // a substring of the error
};

TEST(Validation, ImpossibleModelSettingsNameTheKey) {
  const std::vector<BadSetting> cases = {
      {{"model.hidden_size=0"}, "model.hidden_size = 0 must be positive"},
      {{"model.vocab_size=-1"}, "model.vocab_size = -1 must be positive"},
      {{"model.num_hidden_layers=0"}, "model.num_hidden_layers"},
      {{"model.kv_lora_rank=0"}, "model.kv_lora_rank"},
      {{"model.q_lora_rank=-2"}, "model.q_lora_rank"},
      {{"model.num_experts_per_tok=9"},
       "model.num_experts_per_tok = 9 exceeds model.n_routed_experts = 8"},
      {{"model.n_group=3"}, "model.n_group = 3 does not divide model.n_routed_experts = 8"},
      {{"model.topk_group=3"}, "model.topk_group = 3 exceeds model.n_group = 2"},
      {{"model.num_experts_per_tok=5"}, "model.topk_group = 1 groups of 4 experts hold fewer than"},
      {{"model.qk_rope_head_dim=7"}, "model.qk_rope_head_dim = 7 must be even"},
      {{"model.qk_rope_head_dim=0"}, "model.qk_rope_head_dim = 0 must be positive"},
      {{"model.scoring_func=relu"}, "model.scoring_func = \"relu\" is not supported"},
      {{"model.topk_method=top1"}, "model.topk_method = \"top1\" is not supported"},
      {{"model.scoring_func=softmax"}, "requires model.scoring_func = \"sigmoid\""},
      {{"model.n_group=8", "model.topk_group=2"}, "needs at least 2 experts per group"},
      {{"model.rope_scaling.type=linear"}, "model.rope_scaling.type = \"linear\""},
      {{"model.rope_scaling.factor=0.5"}, "model.rope_scaling.factor = 0.5 must be >= 1"},
      {{"model.rope_scaling.type=yarn", "model.rope_scaling.beta_fast=0.5"},
       "model.rope_scaling.beta_fast"},
      {{"model.moe_layer_freq=0"}, "model.moe_layer_freq = 0 must be >= 1"},
      {{"model.first_k_dense_replace=3"},
       "model.first_k_dense_replace = 3 exceeds model.num_hidden_layers = 2"},
      {{"model.hidden_act=gelu"}, "model.hidden_act = \"gelu\" is not supported"},
      {{"model.tie_word_embeddings=true"}, "model.tie_word_embeddings = true is not supported"},
      {{"model.attention_bias=true"}, "model.attention_bias = true is not supported"},
      {{"model.rms_norm_eps=0"}, "model.rms_norm_eps = 0 must be positive"},
      {{"model.bos_token_id=260"}, "model.bos_token_id = 260 is outside the vocabulary"},
      {{"model.eos_token_id=-1"}, "model.eos_token_id = -1 is outside the vocabulary"},
      {{"model.model_type=llama"}, "model.model_type = \"llama\" is not supported"},
      {{"model.routed_scaling_factor=0"}, "model.routed_scaling_factor"},
      {{"model.rope_theta=-1"}, "model.rope_theta"},
  };
  for (const BadSetting& bad : cases) {
    SCOPED_TRACE(bad.overrides.front());
    const std::string m = error_of([&] { load_config(preset_path("tiny"), bad.overrides); });
    EXPECT_ERROR_HAS(m, bad.expected);
    EXPECT_ERROR_HAS(m, "tiny.toml (with overrides): ");
  }
}

TEST(Validation, ImpossibleTrainingSettingsNameTheKey) {
  const std::vector<BadSetting> cases = {
      {{"train.batch_sequences=6"},
       "train.batch_sequences = 6 is not a multiple of train.micro_batch = 4"},
      {{"train.batch_sequences=0"}, "train.batch_sequences = 0 must be >= 1"},
      {{"train.micro_batch=0"}, "train.micro_batch = 0 must be >= 1"},
      {{"train.seq_len=1"}, "train.seq_len = 1 must be >= 2"},
      {{"train.seq_len=5000"}, "train.seq_len = 5000 exceeds model.max_position_embeddings"},
      {{"optim.lr=-1"}, "optim.lr = -1 must be >= 0"},
      {{"optim.beta2=1"}, "optim.beta2 = 1 must be < 1"},
      {{"optim.eps=0"}, "optim.eps"},
      {{"schedule.decay_start=10"},
       "schedule.decay_start = 10 is before the end of schedule.warmup_steps = 20"},
      {{"schedule.decay_end=10"}, "schedule.decay_end = 10 is before schedule.decay_start = 20"},
      {{"schedule.decay_start=-1"}, "is set but schedule.decay_start"},
      {{"schedule.final_start=100"}, "schedule.final_start = 100 is before schedule.decay_end"},
      {{"train.mtp_weight=[[5, 0.3]]"}, "train.mtp_weight must start at step 0"},
      {{"train.bias_update_speed=[[0, 0.1], [0, 0.2]]"}, "train.bias_update_speed[1] starts"},
      {{"train.mtp_weight=-0.5"}, "train.mtp_weight[0] value -0.5"},
      {{"train.precision=fp16"}, "train.precision = \"fp16\""},
      {{"train.log_every=0"}, "train.log_every"},
      {{"batch_ramp.ramp_tokens=1000"}, "batch_ramp.start_sequences = 0 must be >= 1"},
      {{"batch_ramp.ramp_tokens=1000", "batch_ramp.start_sequences=100"},
       "batch_ramp.start_sequences = 100 exceeds train.batch_sequences = 8"},
      {{"data.val_fraction=1"}, "data.val_fraction = 1 must be < 1"},
      {{"model.vocab_size=100", "model.bos_token_id=0", "model.eos_token_id=1"},
       "too small for data.tokenizer = \"bytes\""},
      {{"generate.top_p=0"}, "generate.top_p"},
      {{"generate.temperature=-1"}, "generate.temperature"},
  };
  for (const BadSetting& bad : cases) {
    SCOPED_TRACE(bad.overrides.front());
    EXPECT_ERROR_HAS(error_of([&] { load_config(preset_path("tiny"), bad.overrides); }),
                     bad.expected);
  }
}

TEST(Validation, DefaultsAreValid) {
  EXPECT_NO_THROW(validate(ModelConfig{}));
  EXPECT_NO_THROW(validate(Config{}));
  EXPECT_EQ(load_config(""), Config{});
}

TEST(Validation, DenseModelSkipsRouterChecks) {
  ModelConfig m;
  m.n_routed_experts = 0;
  m.num_experts_per_tok = 0;
  m.n_group = 0;
  EXPECT_NO_THROW(validate(m));
}

// ---- writing ----------------------------------------------------------------------------------

// train.pp_stage_layers (parallel/stage_layout.h): a string ("auto", "even", "3,4,3,2") or a TOML
// array of integers, kept as its text; lists checked against the pipeline's stages when pp > 1.
TEST(StageLayers, StringAndArrayFormsAndOverrides) {
  EXPECT_EQ(load_config(preset_path("tiny")).train.pp_stage_layers, "auto");
  const fs::path dir = temp_dir();
  const std::string array = write_file(dir / "array.toml", R"(
[model]
num_hidden_layers = 6
[train]
pp = 2
pp_schedule = "dualpipev"
micro_batch = 1
batch_sequences = 8
pp_stage_layers = [1, 2, 3, 0]
)");
  const Config c = load_config(array);
  EXPECT_EQ(c.train.pp_stage_layers, "1,2,3,0");
  // Written back as a string, read back equal.
  EXPECT_EQ(load_config(write_file(dir / "resolved.toml", config_to_toml(c))), c);
  EXPECT_EQ(load_config(array, {"train.pp_stage_layers=2,1,1,2"}).train.pp_stage_layers,
            "2,1,1,2");
  EXPECT_EQ(load_config(array, {"train.pp_stage_layers=[0, 3, 2, 1]"}).train.pp_stage_layers,
            "[0, 3, 2, 1]");
  EXPECT_EQ(load_config(array, {"train.pp_stage_layers=even"}).train.pp_stage_layers, "even");
  // With pp = 1 the setting is unused: any well-formed list loads (checkpoints keep it).
  EXPECT_EQ(load_config(preset_path("tiny"), {"train.pp_stage_layers=5,5"}).train.pp_stage_layers,
            "5,5");
}

TEST(StageLayers, BadSplitsNameTheKeyAndTheRule) {
  const fs::path dir = temp_dir();
  const std::string base = write_file(dir / "base.toml", R"(
[model]
num_hidden_layers = 6
[train]
pp = 2
pp_schedule = "dualpipev"
micro_batch = 1
batch_sequences = 8
)");
  const std::vector<BadSetting> cases = {
      {{"train.pp_stage_layers=3,3"}, "has 2 entries, but the pipeline has 4 stages"},
      {{"train.pp_stage_layers=1,2,2,2"}, "sums to 7 layers, but model.num_hidden_layers = 6"},
      {{"train.pp_stage_layers=3,0,2,1"}, "stage 1 holds 0 layers; a middle stage needs"},
      {{"train.pp_stage_layers=balanced"}, "expected \"auto\", \"even\" or a list"},
      {{"train.pp_stage_layers=3,-1,2,2"}, "is negative"},
      {{"train.pp_stage_layers=[3, 1.5]"}, "is not an integer"},
      {{"train.pp_schedule=1f1b", "train.pp_stage_layers=1,2,3,0"}, "has 4 entries"},
      {{"model.num_hidden_layers=3", "train.pp_stage_layers=even"}, "cannot fill 4 stages"},
  };
  for (const BadSetting& bad : cases) {
    SCOPED_TRACE(bad.overrides.back());
    const std::string m = error_of([&] { load_config(base, bad.overrides); });
    EXPECT_ERROR_HAS(m, "train.pp_stage_layers");
    EXPECT_ERROR_HAS(m, bad.expected);
  }
  const std::string array = write_file(dir / "bad_array.toml",
                                       "[train]\npp_stage_layers = [1, \"two\"]\n");
  const std::string m = error_of([&] { load_config(array); });
  EXPECT_ERROR_HAS(m, "bad_array.toml:2:");
  EXPECT_ERROR_HAS(m, "train.pp_stage_layers must be \"auto\", \"even\" or an array");
  const std::string empty = write_file(dir / "empty.toml", "[train]\npp_stage_layers = []\n");
  EXPECT_ERROR_HAS(error_of([&] { load_config(empty); }), "empty array");
}

TEST(TomlRoundTrip, PresetsReadBackIdentical) {
  const fs::path dir = temp_dir();
  for (const char* name : kPresets) {
    SCOPED_TRACE(name);
    const Config original = load_config(preset_path(name));
    const std::string path = write_file(dir / "resolved.toml", config_to_toml(original));
    EXPECT_EQ(load_config(path), original);
  }
}

TEST(TomlRoundTrip, AwkwardValuesSurvive) {
  Config c = load_config(preset_path("tiny"));
  c.data.train_path = "dir with \"quotes\"\\and\tbackslash/ü.txt";
  c.optim.lr = 0.1 + 0.2;  // not representable in short decimal
  c.optim.eps = 1e-300;
  c.schedule.min_lr = 1.0 / 3.0;
  c.train.mtp_weight = {{0, 0.3}, {7, 1.0 / 7.0}, {1000000, 0.0}};
  c.train.seed = 9'000'000'000'000'000'000ull;
  c.generate.temperature = 0.0;
  const fs::path dir = temp_dir();
  const std::string path = write_file(dir / "resolved.toml", config_to_toml(c));
  EXPECT_EQ(load_config(path), c);
}

TEST(SettingsTable, ListsEverySettingWithItsValue) {
  const Config c = load_config(preset_path("tiny"), {"optim.lr=0.00123"});
  const std::string table = settings_table(c);
  EXPECT_ERROR_HAS(table, "optim.lr");
  EXPECT_ERROR_HAS(table, "0.00123");
  EXPECT_ERROR_HAS(table, "model.rope_scaling.type");
  EXPECT_ERROR_HAS(table, "train.mtp_weight");
  EXPECT_ERROR_HAS(table, "[[0, 0.3]]");
  EXPECT_ERROR_HAS(table, "tokens_per_step");
  EXPECT_ERROR_HAS(table, "512");  // 8 sequences x 64 tokens
  EXPECT_ERROR_HAS(table, "1 of 2");  // MoE layers
}

}  // namespace
}  // namespace frugal
