// The serve and chat subcommands' command lines: help texts; every bad argument (missing or
// unknown checkpoint, unknown option, non-numeric or out-of-range number, a port already taken,
// --speculative for a model without an MTP module)
// is exactly one "frugal: ..." line on stderr naming the problem, with a non-zero exit.
#include <gtest/gtest.h>

#include <csignal>

#include "cli/cli_test_util.h"
#include "infer/serve_test_util.h"
#include "infer/server_process.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

void expect_one_error_line(const Result& r, const std::string& needle, const std::string& what) {
  EXPECT_NE(r.code, 0) << what;
  const std::vector<std::string> lines = lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << what << ": stderr was:\n" << r.err;
  EXPECT_EQ(lines[0].rfind("frugal: ", 0), 0u) << what << ": " << lines[0];
  EXPECT_NE(lines[0].find(needle), std::string::npos) << what << ": " << lines[0];
}

class ServeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("serve_cli");
    make_test_checkpoint(dir_->path("run"));
    make_test_checkpoint(dir_->path("no_mtp"), {"model.num_nextn_predict_layers=0"});
  }
  static void TearDownTestSuite() { delete dir_; }
  static Result run(const std::string& args) { return run_frugal(dir_->path(), args); }
  static TempDir* dir_;
};

TempDir* ServeCli::dir_ = nullptr;

TEST_F(ServeCli, HelpTexts) {
  Result top = run("--help");
  EXPECT_NE(top.out.find("serve"), std::string::npos);
  EXPECT_NE(top.out.find("chat"), std::string::npos);
  Result serve = run("serve --help");
  EXPECT_EQ(serve.code, 0);
  for (const char* option : {"--host", "--port", "--api-key", "--max-concurrent", "--max-queue",
                             "--queue-timeout", "--max-body-bytes", "--max-prompt-tokens",
                             "--max-tokens", "--request-timeout", "--speculative"})
    EXPECT_NE(serve.out.find(option), std::string::npos) << option;
  Result chat = run("chat --help");
  EXPECT_EQ(chat.code, 0);
  EXPECT_NE(chat.out.find("/reset"), std::string::npos);
  EXPECT_NE(chat.out.find("/quit"), std::string::npos);
}

TEST_F(ServeCli, ChatErrors) {
  expect_one_error_line(run("chat"), "one checkpoint", "no checkpoint");
  expect_one_error_line(run("chat missing_dir"), "missing_dir", "missing checkpoint");
  expect_one_error_line(run("chat run --train.steps=3"), "--train.steps", "foreign setting");
  expect_one_error_line(run("chat run --threads x"), "--threads", "bad thread count");
  expect_one_error_line(run("chat run --bogus"), "--bogus", "unknown option");
}

#if FRUGAL_HAVE_HTTPLIB

TEST_F(ServeCli, ServeErrors) {
  expect_one_error_line(run("serve"), "one checkpoint", "no checkpoint");
  expect_one_error_line(run("serve missing_dir --port 0"), "missing_dir", "missing checkpoint");
  expect_one_error_line(run("serve run --bogus"), "--bogus", "unknown option");
  expect_one_error_line(run("serve run --port abc"), "--port", "port not a number");
  expect_one_error_line(run("serve run --port 70000"), "--port", "port out of range");
  expect_one_error_line(run("serve run --max-concurrent 0"), "--max-concurrent", "no slots");
  expect_one_error_line(run("serve run --queue-timeout soon"), "--queue-timeout", "bad seconds");
  expect_one_error_line(run("serve run --max-body-bytes 10"), "--max-body-bytes", "tiny limit");
  expect_one_error_line(run("serve run --generate.seed=1"), "--generate.seed", "config setting");
  expect_one_error_line(run("serve no_mtp --port 0 --speculative"), "MTP", "no MTP module");
}

TEST_F(ServeCli, PortAlreadyTaken) {
  std::signal(SIGPIPE, SIG_IGN);
  ServerProcess first({dir_->path("run"), "--threads", "1"}, dir_->path("first.err"));
  ASSERT_GT(first.port(), 0) << read_bytes(dir_->path("first.err"));
  expect_one_error_line(run(fmt::format("serve run --port {}", first.port())),
                        fmt::format("cannot listen on 127.0.0.1:{}", first.port()), "port taken");
  EXPECT_EQ(first.terminate(std::chrono::seconds(10)), 0);
}

#else

TEST_F(ServeCli, ServeWithoutHttpLibrary) {
  expect_one_error_line(run("serve run"), "cpp-httplib", "no HTTP library");
}

#endif

}  // namespace
}  // namespace frugal
