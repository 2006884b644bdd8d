// The official OpenAI client library talks to `frugal serve`: tests/infer/openai_client/
// client_test.mjs (npm package `openai`, pinned by package-lock.json) runs under Node against a
// served checkpoint with an API key and must exit 0 (its checks: models, chat and text
// completions plain and streamed, usage, typed errors for 401/404/400). Needs node and the
// package: node_modules is installed by scripts/setup.sh, or here with `npm ci` when npm can reach
// its registry; otherwise the test is skipped, saying why.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <csignal>
#include <filesystem>

#include "infer/serve_test_util.h"
#include "infer/server_process.h"
#include "test_util.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;
namespace fs = std::filesystem;

int shell(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(OpenAiClient, OfficialLibraryAgainstFrugalServe) {
#if !FRUGAL_HAVE_HTTPLIB
  GTEST_SKIP() << "built without cpp-httplib: no frugal serve";
#endif
  const fs::path client_dir = fs::path(FRUGAL_SOURCE_DIR) / "tests/infer/openai_client";
  if (shell("command -v node >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  if (!fs::exists(client_dir / "node_modules/openai/package.json")) {
    if (shell("command -v npm >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "the openai npm package is not installed and npm is missing";
    // Bounded: offline, npm would otherwise retry for minutes.
    const int rc = shell(fmt::format("cd '{}' && timeout 60 npm ci --no-audit --no-fund "
                                     "--fetch-retries=1 --fetch-timeout=15000 >/dev/null 2>&1",
                                     client_dir.string()));
    if (rc != 0 || !fs::exists(client_dir / "node_modules/openai/package.json"))
      GTEST_SKIP() << "the openai npm package is not installed and `npm ci` failed (offline?)";
  }
  std::signal(SIGPIPE, SIG_IGN);
  TempDir dir("openai_client");
  make_test_checkpoint(dir.path("tiny"), {"train.seq_len=128"});
  ServerProcess server({dir.path("tiny"), "--api-key", "test-key", "--threads", "1"},
                       dir.path("serve.err"));
  ASSERT_GT(server.port(), 0) << read_bytes(dir.path("serve.err"));
  const std::string out = dir.path("node.out");
  const int rc = shell(fmt::format("cd '{}' && timeout 120 node client_test.mjs "
                                   "http://127.0.0.1:{} test-key tiny >'{}' 2>&1",
                                   client_dir.string(), server.port(), out));
  const std::string log = read_bytes(out);
  EXPECT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("all ok"), std::string::npos) << log;
  std::printf("%s", log.c_str());
  EXPECT_EQ(server.terminate(std::chrono::seconds(10)), 0) << read_bytes(dir.path("serve.err"));
}

}  // namespace
}  // namespace frugal
