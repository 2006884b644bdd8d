// Training recipes and devices: parsing train.precision / train.device (and their errors), the
// GPU fallback rule (fp8 needs sm_90; fp32 and bf16 always granted), the CPU's fp32-only rule,
// the settings in config files and checkpoints' frugal.toml, the trainer's refusals (bf16 on the
// CPU; train.device = "cuda" in a build without CUDA) and the Hopper peak-FLOP/s table used for
// MFU.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "data/text_source.h"
#include "io/config_io.h"
#include "test_util.h"
#include "train/gpu_engine.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace frugal {
namespace {

using ::frugal::testing::error_message;

std::string tiny_path() {
  return std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml";
}

TEST(Recipe, ParsesAndNamesEveryRecipe) {
  for (Recipe r : {Recipe::Fp32, Recipe::Bf16, Recipe::Fp8})
    EXPECT_EQ(parse_recipe(recipe_name(r)), r);
  EXPECT_EQ(parse_recipe("fp32"), Recipe::Fp32);
  EXPECT_EQ(parse_recipe("bf16"), Recipe::Bf16);
  EXPECT_EQ(parse_recipe("fp8"), Recipe::Fp8);
  EXPECT_EQ(recipe_name(Recipe::Fp8), "fp8");
}

TEST(Recipe, UnknownRecipeNamesTheSetting) {
  for (const char* bad : {"fp16", "FP8", "", "bf16 ", "tf32"}) {
    const std::string m = error_message([&] { parse_recipe(bad); });
    EXPECT_NE(m.find("train.precision = \"" + std::string(bad) + "\""), std::string::npos) << m;
    EXPECT_NE(m.find("\"fp32\", \"bf16\", \"fp8\""), std::string::npos) << m;
  }
}

TEST(Recipe, ParsesDevices) {
  EXPECT_EQ(parse_device("cpu"), Device::Cpu);
  EXPECT_EQ(parse_device("cuda"), Device::Cuda);
  EXPECT_EQ(device_name(Device::Cuda), "cuda");
  EXPECT_EQ(parse_device(device_name(Device::Cpu)), Device::Cpu);
  for (const char* bad : {"gpu", "CUDA", "cuda:0", ""}) {
    const std::string m = error_message([&] { parse_device(bad); });
    EXPECT_NE(m.find("train.device = \"" + std::string(bad) + "\""), std::string::npos) << m;
  }
}

TEST(Recipe, Fp32AndBf16AreAlwaysGranted) {
  for (int cc : {60, 75, 80, 86, 89, 90, 100, 120}) {
    for (Recipe r : {Recipe::Fp32, Recipe::Bf16}) {
      const RecipeChoice choice = choose_recipe(r, cc);
      EXPECT_EQ(choice.recipe, r) << cc;
      EXPECT_TRUE(choice.note.empty()) << choice.note;
    }
  }
}

TEST(Recipe, Fp8NeedsSm90AndFallsBackToBf16WithANote) {
  for (int cc : {90, 100, 120}) {
    const RecipeChoice choice = choose_recipe(Recipe::Fp8, cc);
    EXPECT_EQ(choice.recipe, Recipe::Fp8) << cc;
    EXPECT_TRUE(choice.note.empty()) << choice.note;
  }
  for (int cc : {70, 80, 86, 89}) {
    const RecipeChoice choice = choose_recipe(Recipe::Fp8, cc);
    EXPECT_EQ(choice.recipe, Recipe::Bf16) << cc;
    EXPECT_EQ(choice.note.find('\n'), std::string::npos) << "one line: " << choice.note;
    EXPECT_NE(choice.note.find("fp8"), std::string::npos) << choice.note;
    EXPECT_NE(choice.note.find("9.0"), std::string::npos) << choice.note;
    EXPECT_NE(choice.note.find(std::to_string(cc / 10) + "." + std::to_string(cc % 10)),
              std::string::npos)
        << choice.note;
    EXPECT_NE(choice.note.find("bf16"), std::string::npos) << choice.note;
  }
  EXPECT_NE(error_message([] { choose_recipe(Recipe::Fp8, 0); }).find("compute capability"),
            std::string::npos);
}

TEST(Recipe, CpuRunsFp32Only) {
  EXPECT_EQ(cpu_recipe(Recipe::Fp32), Recipe::Fp32);
  for (Recipe r : {Recipe::Bf16, Recipe::Fp8}) {
    const std::string m = error_message([&] { cpu_recipe(r); });
    EXPECT_NE(m.find("train.precision = \"" + std::string(recipe_name(r)) + "\""),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("train.device = \"cuda\""), std::string::npos) << m;
  }
}

TEST(RecipeConfig, DeviceIsASettingSavedWithTheConfig) {
  EXPECT_EQ(Config{}.train.device, "cpu");
  EXPECT_EQ(load_config(tiny_path()).train.device, "cpu");
  EXPECT_EQ(load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/bench-1b.toml").train.device,
            "cuda");
  const Config gpu = load_config(tiny_path(), {"train.device=cuda", "train.precision=fp8"});
  EXPECT_EQ(gpu.train.device, "cuda");
  EXPECT_EQ(gpu.train.precision, "fp8");
  // The checkpoint's frugal.toml carries it and reads back to the same config.
  const std::string toml = config_to_toml(gpu);
  EXPECT_NE(toml.find("device = \"cuda\""), std::string::npos) << toml;
  ::frugal::testing::TempDir dir;
  const std::string path = dir.file("saved.toml");
  {
    std::ofstream out(path);
    out << toml;
  }
  EXPECT_EQ(load_config(path), gpu);
  EXPECT_NE(settings_table(gpu).find("train.device"), std::string::npos);
}

TEST(RecipeConfig, BadDeviceOrPrecisionNamesTheKey) {
  const std::string device = error_message([] { load_config(tiny_path(), {"train.device=gpu"}); });
  EXPECT_NE(device.find("train.device = \"gpu\""), std::string::npos) << device;
  EXPECT_NE(device.find("tiny.toml"), std::string::npos) << device;
  const std::string precision =
      error_message([] { load_config(tiny_path(), {"train.precision=int8"}); });
  EXPECT_NE(precision.find("train.precision = \"int8\""), std::string::npos) << precision;
  ::frugal::testing::TempDir dir;
  const std::string path = dir.file("number.toml");
  std::ofstream(path) << "[train]\ndevice = 3\n";
  const std::string type = error_message([&] { load_config(path); });
  EXPECT_NE(type.find("train.device must be a string, got integer 3"), std::string::npos) << type;
}

std::vector<int32_t> byte_corpus(int64_t count) {
  std::vector<int32_t> tokens(count);
  for (int64_t i = 0; i < count; ++i) tokens[i] = static_cast<int32_t>("abcab cba\n"[i % 10]);
  return tokens;
}

TEST(RecipeTrainer, CpuTrainerRefusesBf16AndFp8) {
  TextDataSource data(byte_corpus(2000), 1);
  for (const char* precision : {"bf16", "fp8"}) {
    const Config config =
        load_config(tiny_path(), {"train.seq_len=16", std::string("train.precision=") + precision});
    const std::string m = error_message([&] { Trainer t(config, data, nullptr, true); });
    EXPECT_NE(m.find("train.precision = \"" + std::string(precision) + "\""), std::string::npos)
        << m;
    EXPECT_NE(m.find("fp32"), std::string::npos) << m;
  }
}

TEST(RecipeTrainer, CpuTrainerNamesItsDevice) {
  ::frugal::testing::TempDir dir;
  TextDataSource data(byte_corpus(2000), 1);
  const Config config =
      load_config(tiny_path(), {"train.seq_len=16", "train.micro_batch=2",
                                "train.batch_sequences=2", "train.steps=1", "train.eval_every=0",
                                "train.threads=1", "train.out_dir=" + dir.sub("run")});
  Trainer t(config, data, nullptr, /*quiet=*/false);
  EXPECT_NE(t.engine().description().find("cpu, fp32"), std::string::npos)
      << t.engine().description();
  EXPECT_TRUE(t.engine().recipe_note().empty());
  EXPECT_GT(t.engine().flops_per_token(16), 0.0);
  ::testing::internal::CaptureStdout();
  t.run();
  const std::string output = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(output.find("device: cpu, fp32, 1 threads"), std::string::npos) << output;
}

#ifndef FRUGAL_HAVE_CUDA
TEST(RecipeTrainer, CudaDeviceNeedsACudaBuild) {
  TextDataSource data(byte_corpus(2000), 1);
  const Config config = load_config(tiny_path(), {"train.seq_len=16", "train.device=cuda"});
  const std::string m = error_message([&] { Trainer t(config, data, nullptr, true); });
  EXPECT_NE(m.find("train.device = \"cuda\""), std::string::npos) << m;
  EXPECT_NE(m.find("without the CUDA backend"), std::string::npos) << m;
}
#endif

TEST(GpuPeakFlops, HopperTable) {
  EXPECT_EQ(gpu_peak_flops("NVIDIA H200", 90, Recipe::Bf16), kH200DenseBf16Flops);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H200", 90, Recipe::Fp8), kH200DenseFp8Flops);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H100 80GB HBM3", 90, Recipe::Bf16), 989e12);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H100 80GB HBM3", 90, Recipe::Fp32), 67e12);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H100 PCIe", 90, Recipe::Bf16), 756e12);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H200 NVL", 90, Recipe::Fp8), 1671e12);
  EXPECT_EQ(gpu_peak_flops("NVIDIA A100-SXM4-80GB", 80, Recipe::Bf16), 0.0);
  EXPECT_EQ(gpu_peak_flops("NVIDIA GH200 480GB", 90, Recipe::Bf16), 989e12);
  EXPECT_EQ(gpu_peak_flops("NVIDIA H20", 90, Recipe::Bf16), 0.0);
}

}  // namespace
}  // namespace frugal
