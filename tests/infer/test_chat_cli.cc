// `frugal chat` with its input piped: standard output is exactly one line per reply, each reply the
// one EngineService gives for the conversation so far (greedy, so exact); the conversation is
// kept between messages; /reset forgets it; /quit ends the session (later lines are not read);
// --system opens the conversation; unknown commands are reported on stderr and skipped; a
// conversation longer than the context drops its oldest turns; sampled replies repeat for a seed.
#include <gtest/gtest.h>

#include "cli/cli_test_util.h"
#include "infer/serve_test_util.h"
#include "infer/engine_service.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

constexpr int64_t kMaxTokens = 8;

class ChatCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("chat_cli");
    make_test_checkpoint(dir_->path("long"), {"train.seq_len=256"});
    make_test_checkpoint(dir_->path("short"));  // 32 tokens of context
    service_ = EngineService::load(dir_->path("long"), "", {.threads = 1}).release();
  }
  static void TearDownTestSuite() {
    delete service_;
    delete dir_;
  }

  // The greedy reply of the long-context checkpoint to a conversation.
  static std::string reply(const std::vector<ChatMessage>& messages) {
    GenerationRequest request;
    request.prompt = service_->encode_chat(messages);
    request.max_tokens = kMaxTokens;
    request.temperature = 0;
    request.stop = service_->chat_stop_strings();
    std::string text;
    service_->generate(request, [&](const GenerationDelta& d) {
      text += d.text;
      return true;
    });
    return text;
  }

  static Result chat(const std::string& run, const std::string& input,
                     const std::string& extra = "--generate.temperature=0") {
    write_bytes(dir_->path("input.txt"), input);
    return run_frugal(dir_->path(), fmt::format("chat {} --generate.max_new_tokens={} {} <input.txt",
                                                run, kMaxTokens, extra));
  }

  static TempDir* dir_;
  static EngineService* service_;
};

TempDir* ChatCli::dir_ = nullptr;
EngineService* ChatCli::service_ = nullptr;

TEST_F(ChatCli, KeepsTheConversation) {
  const std::string first = reply({{"user", "hello"}});
  const std::string second = reply({{"user", "hello"}, {"assistant", first}, {"user", "hi"}});
  ASSERT_NE(second, reply({{"user", "hi"}}));  // else this test could not tell kept from lost
  Result r = chat("long", "hello\nhi\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, first + "\n" + second + "\n");
  EXPECT_EQ(r.err, "");  // no prompts when the input is not a terminal
}

TEST_F(ChatCli, ResetQuitAndUnknownCommands) {
  Result r = chat("long", "hello\n/reset\n\n/bogus\nhi\n/quit\nnot read\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, reply({{"user", "hello"}}) + "\n" + reply({{"user", "hi"}}) + "\n");
  EXPECT_NE(r.err.find("/bogus"), std::string::npos) << r.err;
}

TEST_F(ChatCli, SystemMessage) {
  Result r = chat("long", "hi\n/reset\nhi\n", "--generate.temperature=0 --system 'Be brief.'");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string expected = reply({{"system", "Be brief."}, {"user", "hi"}});
  ASSERT_NE(expected, reply({{"user", "hi"}}));
  EXPECT_EQ(r.out, expected + "\n" + expected + "\n");  // /reset keeps the system message
}

TEST_F(ChatCli, LongConversationDropsOldTurns) {
  // With 32 tokens of context, "hello" and its reply no longer fit beside "hi": the second reply
  // is the reply to "hi" alone.
  Result together = chat("short", "hello\nhi\n");
  Result alone = chat("short", "hi\n");
  ASSERT_EQ(together.code, 0) << together.err;
  ASSERT_EQ(alone.code, 0) << alone.err;
  ASSERT_GT(together.out.size(), alone.out.size());
  EXPECT_TRUE(together.out.ends_with("\n" + alone.out)) << together.out << " / " << alone.out;
}

TEST_F(ChatCli, SampledRepliesRepeatForASeed) {
  const std::string settings = "--generate.temperature=1 --generate.seed=9";
  Result a = chat("long", "hello\nhi\n", settings);
  Result b = chat("long", "hello\nhi\n", settings);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  Result bad = chat("long", "hi\n", "--generate.nope=1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("nope"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace frugal
