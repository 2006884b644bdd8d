// Golden parity with Hugging Face transformers: small random DeepseekV3ForCausalLM models made by
// tools/make_golden.py (float64, on the GPU machine) are loaded through frugal and must give the
// same logits, loss and parameter gradients. transformers ignores MTP layers, so the models here
// are built without MTP and the loss is the plain next-token cross-entropy.
//   fp64: relative error <= 1e-9 (same math, different order of operations)
//   fp32: relative error <= 1e-5 for logits, <= 1e-4 for gradients (the bar)
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/config_io.h"
#include "io/model_io.h"
#include "io/safetensors.h"
#include "model/transformer.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

const fs::path kGoldenDir = fs::path(FRUGAL_SOURCE_DIR) / "tests" / "golden";

std::vector<std::string> golden_cases() {
  std::vector<std::string> cases;
  if (!fs::exists(kGoldenDir)) return cases;
  for (auto& entry : fs::directory_iterator(kGoldenDir))
    if (fs::exists(entry.path() / "golden.safetensors")) cases.push_back(entry.path().filename());
  std::sort(cases.begin(), cases.end());
  return cases;
}

// ||a - b|| / ||b||
double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

template <class T>
void check_case(const std::string& name, double logit_tol, double grad_tol) {
  const fs::path dir = kGoldenDir / name;
  ModelConfig cfg = load_hf_config((dir / "config.json").string());
  cfg.num_nextn_predict_layers = 0;  // transformers builds no MTP module
  Transformer<T> model(cfg);
  load_params(model.params(), (dir / "model.safetensors").string(),
              ParamLoadOptions{{"model.layers." + std::to_string(cfg.num_hidden_layers) + "."}});

  SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
  const auto& ids_shape = golden.info("input_ids").shape;
  ASSERT_EQ(ids_shape.size(), 2u);
  const int64_t batch = ids_shape[0], seq = ids_shape[1];
  std::vector<double> ids = golden.read_as<double>("input_ids");
  std::vector<int32_t> tokens(batch * seq), targets(batch * seq);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) {
      tokens[b * seq + t] = static_cast<int32_t>(ids[b * seq + t]);
      targets[b * seq + t] = t + 1 < seq ? static_cast<int32_t>(ids[b * seq + t + 1]) : -1;
    }

  typename Transformer<T>::Ctx ctx;
  Losses losses = model.forward(ctx, tokens.data(), targets.data(), batch, seq, {0.0, 0.0}, false);
  std::vector<double> logits(ctx.logits.begin(), ctx.logits.end());
  double logit_err = relative_error(logits, golden.read_as<double>("logits"));
  double loss_ref = golden.read_as<double>("loss")[0];
  std::printf("%s [%s]: logits rel err %.3e, loss %.12f vs %.12f\n", name.c_str(),
              sizeof(T) == 8 ? "fp64" : "fp32", logit_err, losses.main, loss_ref);
  EXPECT_LT(logit_err, logit_tol) << name;
  EXPECT_LT(std::fabs(losses.main - loss_ref) / std::fabs(loss_ref), logit_tol) << name;

  model.params().zero_grad();
  model.backward_input(ctx, 1.0);
  model.backward_weight(ctx);
  double worst = 0;
  std::string worst_name;
  int64_t compared = 0;
  for (auto& p : model.params().all()) {
    if (!p->trainable) continue;
    const std::string key = "grad." + p->name;
    ASSERT_TRUE(golden.contains(key)) << name << ": no golden gradient for " << p->name;
    std::vector<double> mine(p->grad.begin(), p->grad.end());
    std::vector<double> ref = golden.read_as<double>(key);
    double norm = 0;
    for (double r : ref) norm += r * r;
    if (norm == 0) {  // an expert no token reached: both must be exactly zero
      for (double g : mine) ASSERT_EQ(g, 0.0) << p->name;
      continue;
    }
    double err = relative_error(mine, ref);
    if (err > worst) worst = err, worst_name = p->name;
    ++compared;
  }
  std::printf("%s [%s]: %lld gradients, worst rel err %.3e (%s)\n", name.c_str(),
              sizeof(T) == 8 ? "fp64" : "fp32", static_cast<long long>(compared), worst,
              worst_name.c_str());
  EXPECT_LT(worst, grad_tol) << name << " worst " << worst_name;
}

TEST(HfParity, GoldenFilesExist) {
  if (golden_cases().empty()) GTEST_SKIP() << "no golden files in " << kGoldenDir;
  EXPECT_GE(golden_cases().size(), 2u);
}

TEST(HfParity, Float64MatchesTransformers) {
  auto cases = golden_cases();
  if (cases.empty()) GTEST_SKIP() << "no golden files in " << kGoldenDir;
  for (auto& c : cases) check_case<double>(c, 1e-9, 1e-9);
}

TEST(HfParity, Float32MatchesTransformers) {
  auto cases = golden_cases();
  if (cases.empty()) GTEST_SKIP() << "no golden files in " << kGoldenDir;
  for (auto& c : cases) check_case<float>(c, 1e-5, 1e-4);
}

}  // namespace
}  // namespace frugal
