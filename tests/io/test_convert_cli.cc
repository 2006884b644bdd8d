// frugal convert and frugal generate end to end: a trained tiny checkpoint exported to Hugging Face
// shards (BF16 and FP8), imported back, exported again byte for byte, and generated from; greedy
// and sampled generation give the same text with --speculative; bad invocations give one
// "frugal: ..." line naming the problem and write nothing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "cli/cli_test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace ::frugal::testing;

class ConvertCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("frugal_test_convert_{}", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran\n"};
    std::string text;
    uint32_t state = 777;
    while (text.size() < 6000) {
      state = state * 1664525u + 1013904223u;
      text += words[(state >> 16) % 8];
    }
    write_bytes(root_ / "data.txt", text);
    Result r = run(fmt::format(
        "train '{}/configs/tiny.toml' --data.train_path=data.txt --train.out_dir=trained "
        "--train.steps=3 --train.seq_len=32 --train.micro_batch=2 --train.batch_sequences=2 "
        "--train.eval_every=0 --train.threads=1",
        FRUGAL_SOURCE_DIR));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  static Result run(const std::string& args) { return run_frugal(root_, args); }
  static void expect_one_error_line(const Result& r, const std::string& needle) {
    EXPECT_NE(r.code, 0) << needle;
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << r.err;
    EXPECT_EQ(lines[0].rfind("frugal: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(needle), std::string::npos) << lines[0];
  }
  static fs::path root_;
};

fs::path ConvertCli::root_;

TEST_F(ConvertCli, ExportImportGenerate) {
  Result r = run("convert --from trained --to hf_bf16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("exported"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(root_ / "hf_bf16/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(root_ / "hf_bf16/config.json"));

  r = run("convert --from hf_bf16 --to imported");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("imported"), std::string::npos) << r.out;
  // BF16 -> F32 -> BF16 is exact: the second export is the first, byte for byte.
  r = run("convert --from imported --to hf_again --shard-mb 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(snapshot(root_ / "hf_again"), snapshot(root_ / "hf_bf16"));

  // FP8 export: scales next to the FP8 weights; the import generates.
  r = run("convert --from trained --to hf_fp8 --fp8");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto index = nlohmann::json::parse(read_bytes(root_ / "hf_fp8/model.safetensors.index.json"));
  EXPECT_TRUE(index["weight_map"].contains("model.layers.1.self_attn.kv_b_proj.weight_scale_inv"));
  ASSERT_EQ(run("convert --from hf_fp8 --to imported_fp8").code, 0);

  for (const char* checkpoint : {"imported", "imported_fp8", "trained"}) {
    const std::string args = fmt::format(
        "generate {} --prompt 'the cat' --generate.max_new_tokens=40 ", checkpoint);
    for (const char* sampling : {"--generate.temperature=0", "--generate.temperature=0.9 --generate.seed=3"}) {
      Result plain = run(args + sampling);
      ASSERT_EQ(plain.code, 0) << plain.err;
      EXPECT_EQ(plain.err, "");
      EXPECT_EQ(plain.out.rfind("the cat", 0), 0u) << plain.out;
      Result spec = run(args + sampling + " --speculative --stats");
      ASSERT_EQ(spec.code, 0) << spec.err;
      EXPECT_EQ(spec.out, plain.out) << checkpoint << " " << sampling;
      EXPECT_NE(spec.err.find("MTP drafts"), std::string::npos) << spec.err;
    }
  }
}

TEST_F(ConvertCli, BadInvocations) {
  expect_one_error_line(run("convert --from trained"), "--to");
  expect_one_error_line(run("convert --to out"), "--from");
  expect_one_error_line(run("convert --from no_such_dir --to out"), "no_such_dir");
  expect_one_error_line(run("convert --from data.txt --to out"), "data.txt");
  expect_one_error_line(run("convert --from trained --to out --shard-mb 0"), "--shard-mb");
  ASSERT_EQ(run("convert --from trained --to hf_small").code, 0);
  expect_one_error_line(run("convert --from hf_small --to out --fp8"), "--fp8");
  expect_one_error_line(run("convert --from hf_small --to trained"), "not an empty directory");
  fs::remove(root_ / "hf_small/config.json");
  expect_one_error_line(run("convert --from hf_small --to out"), "config.json");
  EXPECT_FALSE(fs::exists(root_ / "out"));
  Result help = run("convert --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--fp8"), std::string::npos);
}

}  // namespace
