// The frugal binary end to end, run in a temporary directory: help texts; every bad input (usage,
// TOML, config, data file, checkpoint) gives exactly one "frugal: ..." line on stderr naming the
// file or key, a non-zero exit and writes nothing; a second train into the same out_dir is refused
// and leaves the checkpoint byte-identical; --resume matches an uninterrupted run byte for byte;
// generate is deterministic for a seed and greedy decoding ignores the seed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "cli/cli_test_util.h"

namespace {

namespace fs = std::filesystem;

using namespace ::frugal::testing;

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / fmt::format("frugal_test_cli_{}", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    // A small corpus of words: 6000 bytes.
    const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran\n"};
    std::string text;
    uint32_t state = 12345;
    while (text.size() < 6000) {
      state = state * 1664525u + 1013904223u;
      text += words[(state >> 16) % 8];
    }
    write_bytes(root_ / "data.txt", text);
    // The run every generate test reads.
    Result r = run("train " + train_args("trained", 3));
    ASSERT_EQ(r.code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Runs `frugal ARGS` in the temporary directory, on one thread (the test machine is shared).
  static Result run(const std::string& args) { return run_frugal(root_, args); }

  // A tiny, fast run: seq_len 32, two micro-batches of 2 per step.
  static std::string train_args(const std::string& out_dir, int steps,
                                const std::string& data = "data.txt") {
    return fmt::format(
        "'{}/configs/tiny.toml' --data.train_path={} --train.out_dir={} --train.steps={} "
        "--train.seq_len=32 --train.micro_batch=2 --train.batch_sequences=4 --train.eval_every=2 "
        "--train.eval_batches=1 --train.log_every=1 --train.threads=1",
        FRUGAL_SOURCE_DIR, data, out_dir, steps);
  }

  // Exactly one line on stderr, "frugal: ...", containing `needle`; a non-zero exit.
  static void expect_one_error_line(const Result& r, const std::string& needle,
                                    const std::string& what) {
    EXPECT_NE(r.code, 0) << what;
    auto lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << what << ": stderr was:\n" << r.err;
    EXPECT_EQ(lines[0].rfind("frugal: ", 0), 0u) << what << ": " << lines[0];
    EXPECT_NE(lines[0].find(needle), std::string::npos) << what << ": " << lines[0];
  }

  static fs::path root_;
};

fs::path Cli::root_;

TEST_F(Cli, HelpTexts) {
  for (const char* args : {"--help", "train --help", "generate --help"}) {
    Result r = run(args);
    EXPECT_EQ(r.code, 0) << args;
    EXPECT_NE(r.out.find("usage: frugal"), std::string::npos) << args << ": " << r.out;
    EXPECT_EQ(r.err, "") << args;
  }
  Result bare = run("");
  EXPECT_NE(bare.code, 0);
  EXPECT_NE(bare.err.find("usage: frugal"), std::string::npos);
}

TEST_F(Cli, UnknownCommandsAndOptions) {
  expect_one_error_line(run("bogus"), "bogus", "unknown command");
  expect_one_error_line(run("train --bogus"), "--bogus", "unknown train option");
  expect_one_error_line(run("generate trained --bogus=1"), "--bogus", "unknown generate option");
  expect_one_error_line(run("train a.toml b.toml"), "one config", "two config files");
  expect_one_error_line(run("generate"), "checkpoint", "generate without a directory");
}

TEST_F(Cli, BadTrainingInputsGiveOneLineAndWriteNothing) {
  write_bytes(root_ / "malformed.toml", "[train\nsteps = 3\n");
  write_bytes(root_ / "unknown_key.toml", "[train]\nstepz = 3\n");
  write_bytes(root_ / "empty.txt", "");
  write_bytes(root_ / "short.txt", "the cat\n");
  write_bytes(root_ / "corrupt.txt.zst", "this is not zstd data at all");
  fs::create_directories(root_ / "adir");
  const std::string base = train_args("bad_out", 3);
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"train malformed.toml --train.out_dir=bad_out", "malformed.toml"},
      {"train unknown_key.toml --train.out_dir=bad_out", "stepz"},
      {"train nothing.toml --train.out_dir=bad_out", "nothing.toml"},
      {"train " + base + " --train.stepz=3", "train.stepz"},
      {"train " + base + " --train.steps=many", "train.steps"},
      {"train " + base + " --model.num_experts_per_tok=99", "num_experts_per_tok"},
      {"train " + base + " --train.batch_sequences=3", "train.batch_sequences"},
      {"train " + base + " --data.train_path=", "data.train_path"},
      {"train " + train_args("bad_out", 3, "missing.txt"), "missing.txt"},
      {"train " + train_args("bad_out", 3, "empty.txt"), "empty.txt"},
      {"train " + train_args("bad_out", 3, "adir"), "adir"},
      {"train " + train_args("bad_out", 3, "short.txt"), "short.txt"},
      {"train " + train_args("bad_out", 3, "corrupt.txt.zst"), "corrupt.txt.zst"},
      {"train " + base + " --resume", "bad_out"},
  };
  for (const Case& c : cases) {
    Result r = run(c.args);
    expect_one_error_line(r, c.needle, c.args);
    EXPECT_EQ(r.out, "") << c.args;  // the settings table comes only after the inputs are checked
    EXPECT_FALSE(fs::exists(root_ / "bad_out")) << c.args << " wrote into the out_dir";
  }
}

TEST_F(Cli, SecondTrainIntoTheSameDirectoryIsRefused) {
  Result first = run("train " + train_args("twice", 2));
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_EQ(first.err, "");
  EXPECT_NE(first.out.find("step 2/2 | loss "), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("saved twice/checkpoint-00000002"), std::string::npos) << first.out;
  const auto before = snapshot(root_ / "twice");
  ASSERT_TRUE(before.count("checkpoint-00000002/model.safetensors"));

  Result second = run("train " + train_args("twice", 2));
  expect_one_error_line(second, "twice", "second train");
  EXPECT_NE(second.err.find("--resume"), std::string::npos);
  EXPECT_TRUE(snapshot(root_ / "twice") == before) << "the second run changed the run directory";

  // Resuming with another model is refused before anything is printed or written.
  Result other = run("train " + train_args("twice", 3) + " --resume --model.rope_theta=500");
  expect_one_error_line(other, "rope_theta", "resume with another model");
  EXPECT_EQ(other.out, "");
  EXPECT_TRUE(snapshot(root_ / "twice") == before) << "the refused resume changed the run directory";
}

TEST_F(Cli, ResumeMatchesAnUninterruptedRun) {
  ASSERT_EQ(run("train " + train_args("straight", 4)).code, 0);
  ASSERT_EQ(run("train " + train_args("split", 2)).code, 0);
  Result resumed = run("train " + train_args("split", 4) + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed from split/checkpoint-00000002 at step 2"), std::string::npos)
      << resumed.out;
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(read_bytes(root_ / "straight/checkpoint-00000004" / file) ==
                read_bytes(root_ / "split/checkpoint-00000004" / file))
        << file << " differs between the resumed and the uninterrupted run";
  // The metrics of both runs list the same steps with the same losses.
  auto a = lines_of(read_bytes(root_ / "straight/metrics.jsonl"));
  auto b = lines_of(read_bytes(root_ / "split/metrics.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    auto loss = [](const std::string& line) { return line.substr(line.find("\"loss\":"), 30); };
    EXPECT_EQ(loss(a[i]), loss(b[i])) << "step " << i + 1;
  }

  // Resuming a finished run does nothing and says so.
  const auto before = snapshot(root_ / "split");
  Result again = run("train " + train_args("split", 4) + " --resume");
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.out.find("nothing to do"), std::string::npos) << again.out;
  EXPECT_TRUE(snapshot(root_ / "split") == before);
}

TEST_F(Cli, InterruptSavesACheckpointThatResumes) {
  const fs::path out = root_ / "interrupted";
  const std::string command = fmt::format(
      "cd '{}' && exec env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 '{}' train {} "
      "--train.log_every=1000 >int_stdout.txt 2>int_stderr.txt",
      root_.string(), FRUGAL_BINARY, train_args("interrupted", 1000000));
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // The first metrics record means the loop (and its signal handler) is running.
  for (int i = 0; i < 600 && read_bytes(out / "metrics.jsonl").empty(); ++i) usleep(50000);
  ASSERT_EQ(kill(pid, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping cleanly";
  EXPECT_EQ(WEXITSTATUS(status), 130);
  const std::string output = read_bytes(root_ / "int_stdout.txt");
  EXPECT_NE(output.find("interrupted after step"), std::string::npos) << output;
  EXPECT_EQ(read_bytes(root_ / "int_stderr.txt"), "");
  const auto records = lines_of(read_bytes(out / "metrics.jsonl"));
  ASSERT_GE(records.size(), 1u);
  const std::string checkpoint = fmt::format("checkpoint-{:08d}", records.size());
  EXPECT_EQ(read_bytes(out / "latest"), checkpoint + "\n");
  Result resumed =
      run("train " + train_args("interrupted", static_cast<int>(records.size()) + 1) + " --resume");
  EXPECT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed from interrupted/" + checkpoint), std::string::npos)
      << resumed.out;
}

TEST_F(Cli, GenerateIsDeterministic) {
  const std::string args = "generate trained --prompt 'the cat' --generate.max_new_tokens=48 ";
  Result a = run(args + "--generate.seed=7");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.err, "");
  EXPECT_EQ(a.out.rfind("the cat", 0), 0u) << a.out;
  EXPECT_GT(a.out.size(), std::string("the cat\n").size());
  EXPECT_EQ(run(args + "--generate.seed=7").out, a.out);
  EXPECT_NE(run(args + "--generate.seed=8").out, a.out);  // 48 draws from a near-uniform model

  Result greedy = run(args + "--generate.temperature=0 --generate.seed=7");
  ASSERT_EQ(greedy.code, 0) << greedy.err;
  EXPECT_EQ(run(args + "--generate.temperature=0 --generate.seed=7").out, greedy.out);
  EXPECT_EQ(run(args + "--generate.temperature=0 --generate.seed=99").out, greedy.out);
  // A checkpoint directory works as well as its run directory.
  EXPECT_EQ(run("generate trained/checkpoint-00000003 --prompt 'the cat' "
                "--generate.max_new_tokens=48 --generate.temperature=0")
                .out,
            greedy.out);
}

TEST_F(Cli, BadCheckpointsGiveOneLine) {
  fs::remove_all(root_ / "damaged");
  fs::copy(root_ / "trained/checkpoint-00000003", root_ / "damaged");
  const fs::path weights = root_ / "damaged/model.safetensors";
  const std::string good = read_bytes(weights);
  const std::string args = " --generate.max_new_tokens=4";

  write_bytes(weights, good.substr(0, good.size() / 2));
  Result r = run("generate damaged" + args);
  expect_one_error_line(r, "damaged/model.safetensors", "truncated weights");
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");

  // Hostile header: a length far past the end of the file.
  write_bytes(weights, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10));
  r = run("generate damaged" + args);
  expect_one_error_line(r, "damaged/model.safetensors", "hostile header");
  EXPECT_EQ(r.out, "");

  // Hostile header: a tensor claiming a huge span.
  const std::string header =
      R"({"lm_head.weight":{"dtype":"F32","shape":[260,64],"data_offsets":[0,1000000000000000]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_bytes(weights, file + header);
  r = run("generate damaged" + args);
  expect_one_error_line(r, "lm_head.weight", "oversized tensor");

  expect_one_error_line(run("generate no_such_dir" + args), "no_such_dir", "missing directory");
  expect_one_error_line(run("generate data.txt" + args), "data.txt", "a file, not a directory");
  expect_one_error_line(run("generate trained --train.steps=3"), "train.steps", "train override");
  expect_one_error_line(run("generate trained --generate.temperature=-1"), "generate.temperature",
                        "bad sampling setting");
}

}  // namespace
