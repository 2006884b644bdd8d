// Golden parity of `frugal convert` + the inference engine with Hugging Face transformers, on the
// files of tools/make_hf_checkpoint_golden.py (tests/golden/hf_checkpoint/: a DeepseekV3ForCausalLM
// saved by save_pretrained in BF16 with a sharded index, the same weights in DeepSeek's FP8 block
// format, transformers' float64 logits and 16-token greedy continuations). Each directory is
// imported through convert into a frugal checkpoint; then
//   - the training forward and the engine's prefill give transformers' logits (<= 1e-4 relative);
//   - the engine's greedy continuation is transformers' token for token.
// Skipped, saying so, when the golden directory is absent. The same checks also run on a
// directory made here (frugal's own export, a float64 reference), so the checking code is
// exercised on every machine.
#include <gtest/gtest.h>

#include <filesystem>

#include "infer/engine.h"
#include "infer/infer_test_util.h"
#include "io/hf_checkpoint.h"
#include "io/hf_test_util.h"
#include "io/model_io.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

const fs::path kGolden = fs::path(FRUGAL_SOURCE_DIR) / "tests" / "golden" / "hf_checkpoint";

std::vector<int32_t> ids_of(const SafetensorsFile& file, const std::string& name) {
  std::vector<int32_t> out;
  for (double v : file.read_as<double>(name)) out.push_back(static_cast<int32_t>(v));
  return out;
}

// Imports <dir>/<tag> and compares with <dir>/reference.safetensors.
void check_variant(const fs::path& dir, const std::string& tag, bool expect_fp8) {
  SCOPED_TRACE(tag);
  testing::TempDir tmp("hfgolden");
  const ConvertSummary summary = import_hf_checkpoint((dir / tag).string(), tmp.path("ckpt"));
  EXPECT_EQ(summary.fp8_tensors > 0, expect_fp8);
  const ModelConfig cfg = frugal_checkpoint_model_config(tmp.path("ckpt"));
  EXPECT_EQ(cfg.num_nextn_predict_layers, 0);
  Transformer<float> model(cfg);
  load_params(model.params(), tmp.path("ckpt/model.safetensors"));

  const SafetensorsFile ref = SafetensorsFile::open((dir / "reference.safetensors").string());
  const std::vector<int64_t> shape = ref.info("input_ids").shape;
  ASSERT_EQ(shape.size(), 2u);
  const int64_t batch = shape[0], seq = shape[1], V = cfg.vocab_size;
  const std::vector<int32_t> ids = ids_of(ref, "input_ids");
  const std::vector<float> want = ref.read_as<float>("logits_" + tag);
  ASSERT_EQ(want.size(), static_cast<size_t>(batch * seq * V));

  // Training forward.
  std::vector<int32_t> targets(ids.size(), -1);
  Transformer<float>::Ctx ctx;
  model.forward(ctx, ids.data(), targets.data(), batch, seq, LossWeights{0.0, 0.0}, false);
  const double train_err = testing::relative_error(ctx.logits.data(), want.data(), want.size());
  EXPECT_LT(train_err, 1e-4);

  // The engine's prefill, one sequence per cache sequence in one batch.
  const infer::InferenceModel im(model);
  infer::PagedLatentCache cache = im.make_cache(false, 5, 64);
  infer::Rows rows;
  std::vector<int64_t> all;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t s = cache.open_sequence();
    ASSERT_TRUE(cache.grow(s, seq));
    for (int64_t t = 0; t < seq; ++t) {
      all.push_back(rows.size());
      rows.add(ids[b * seq + t], t, s);
    }
  }
  std::vector<float> logits;
  im.forward(rows, cache, all, &logits, nullptr);
  const double engine_err = testing::relative_error(logits.data(), want.data(), want.size());
  EXPECT_LT(engine_err, 1e-4);

  // Greedy continuation through the engine.
  infer::Request request;
  request.prompt = ids_of(ref, "prompt");
  request.sampling.temperature = 0;
  request.ignore_eos = true;
  const std::vector<int32_t> greedy = ids_of(ref, "greedy_" + tag);
  request.max_new_tokens = static_cast<int64_t>(greedy.size());
  infer::Engine engine(model, infer::EngineOptions{});
  engine.submit(request);
  const std::vector<infer::Completion> done = engine.run();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].tokens, greedy);
  std::printf("%s: logits rel err %.2e (training forward), %.2e (engine); greedy %s\n", tag.c_str(),
              train_err, engine_err, done[0].tokens == greedy ? "identical" : "DIFFERENT");
}

TEST(HfCheckpointGolden, TransformersFiles) {
  if (!fs::exists(kGolden / "reference.safetensors"))
    GTEST_SKIP() << "no golden files in " << kGolden.string()
                 << " (made by tools/make_hf_checkpoint_golden.py on the GPU machine)";
  check_variant(kGolden, "bf16", false);
  check_variant(kGolden, "fp8", true);
}

// The same checks on a directory made here: frugal's BF16 and FP8 exports of a random model, with
// references from the float64 training forward on the imported weights.
TEST(HfCheckpointGolden, CheckingCodeOnFrugalFiles) {
  testing::TempDir tmp("hfgolden_self");
  ModelConfig cfg = testing::infer_config();
  cfg.num_nextn_predict_layers = 0;
  Transformer<float> model(cfg);
  testing::randomize(model, 77);
  testing::write_frugal_checkpoint(tmp.path("ckpt"), model);
  const fs::path dir = tmp.path("golden");
  HfExportOptions options;
  options.shard_bytes = 16 << 10;
  export_hf_checkpoint(tmp.path("ckpt"), (dir / "bf16").string(), options);
  options.fp8 = true;
  export_hf_checkpoint(tmp.path("ckpt"), (dir / "fp8").string(), options);

  const int64_t batch = 2, seq = 12, prompt_len = 8, new_tokens = 16, V = cfg.vocab_size;
  const std::vector<int32_t> ids = testing::random_tokens(batch * seq, V, 5);
  SafetensorsWriter writer;
  auto add_ids = [&](const std::string& name, const std::vector<int32_t>& v, std::vector<int64_t> shape) {
    const std::vector<double> wide(v.begin(), v.end());
    writer.add_converted(name, DType::I64, std::move(shape), wide.data());
  };
  add_ids("input_ids", ids, {batch, seq});
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + prompt_len);
  add_ids("prompt", prompt, {prompt_len});
  for (const std::string tag : {"bf16", "fp8"}) {
    Transformer<double> reference(cfg);
    const HfCheckpointReader reader((dir / tag).string());
    reader.read([&](const HfTensorSpec& spec, const float* values) {
      auto& p = reference.params().get(spec.name);
      std::copy(values, values + p.numel(), p.value.begin());
    });
    std::vector<int32_t> targets(ids.size(), -1);
    Transformer<double>::Ctx ctx;
    reference.forward(ctx, ids.data(), targets.data(), batch, seq, LossWeights{0.0, 0.0}, false);
    writer.add_converted("logits_" + tag, DType::F64, {batch, seq, V}, ctx.logits.data());
    std::vector<int32_t> tokens = prompt, greedy;
    for (int64_t i = 0; i < new_tokens; ++i) {
      const std::vector<double> last = reference.last_logits(tokens.data(), static_cast<int64_t>(tokens.size()));
      const int32_t best = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
      tokens.push_back(best);
      greedy.push_back(best);
    }
    add_ids("greedy_" + tag, greedy, {new_tokens});
  }
  writer.write((dir / "reference.safetensors").string());
  check_variant(dir, "bf16", false);
  check_variant(dir, "fp8", true);
}

}  // namespace
}  // namespace frugal
