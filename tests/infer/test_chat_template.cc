// DeepSeek chat format: the rendered text and its tokens (special tokens as single ids),
// system messages folded into the prefix, DeepSeek-family templates recognised, other templates
// and tokenizers without role tokens refused with the file named.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "infer/chat_template.h"
#include "io/atomic_file.h"
#include "test_util.h"

namespace frugal {
namespace {

using infer::ChatMessage;

const std::string kTokenizer =
    std::string(FRUGAL_SOURCE_DIR) + "/tests/golden/tokenizers/en_deepseek_8k.tokenizer.json";

// The start of DeepSeek-V3's Jinja template (role markers as its tokenizer_config.json has them).
const char* kDeepSeekJinja =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == "
    "'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == "
    "'assistant' %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜>'}}{% endif %}";

TEST(ChatTemplate, RendersDeepSeekFormat) {
  const Tokenizer tokenizer = Tokenizer::from_file(kTokenizer);
  const infer::ChatTemplate format = infer::deepseek_chat_template(tokenizer);
  const std::vector<ChatMessage> messages = {{"system", "Be brief."},
                                             {"user", "Hi"},
                                             {"assistant", "Hello."},
                                             {"system", "Use English."},
                                             {"user", "Why?"}};
  const std::string text = format.render(messages, true);
  EXPECT_EQ(text,
            "<｜begin▁of▁sentence｜>Be brief.\n\nUse English.<｜User｜>Hi<｜Assistant｜>Hello."
            "<｜end▁of▁sentence｜><｜User｜>Why?<｜Assistant｜>");
  EXPECT_EQ(format.render({{"user", "Hi"}}, false), "<｜begin▁of▁sentence｜><｜User｜>Hi");
  // The markers encode as the special tokens.
  const std::vector<int32_t> ids = tokenizer.encode(text);
  EXPECT_EQ(ids.front(), *tokenizer.bos_id());
  EXPECT_EQ(ids.back(), *tokenizer.special_id(SpecialRole::kAssistant));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *tokenizer.special_id(SpecialRole::kUser)), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *tokenizer.eos_id()), 1);
  EXPECT_NE(testing::error_message([&] { format.render({{"tool", "x"}}, true); }).find("tool"),
            std::string::npos);
}

TEST(ChatTemplate, TokenizerConfigDetection) {
  testing::TempDir tmp("chat");
  const Tokenizer tokenizer = Tokenizer::from_file(kTokenizer);
  const std::string path = tmp.path("tokenizer_config.json");
  // Absent file or template: the built-in format.
  EXPECT_EQ(infer::load_chat_template(path, tokenizer).origin, "built-in DeepSeek chat format");
  write_file_atomic(path, R"({"add_bos_token": true})");
  EXPECT_EQ(infer::load_chat_template(path, tokenizer).origin, "built-in DeepSeek chat format");
  // DeepSeek's template, as a string or as the "default" of a list.
  write_file_atomic(path, nlohmann::json{{"chat_template", kDeepSeekJinja}}.dump());
  infer::ChatTemplate format = infer::load_chat_template(path, tokenizer);
  EXPECT_NE(format.origin.find("DeepSeek chat template family"), std::string::npos);
  EXPECT_EQ(format.user, "<｜User｜>");
  write_file_atomic(path, nlohmann::json{{"chat_template", {{{"name", "default"},
                                                              {"template", kDeepSeekJinja}}}}}.dump());
  EXPECT_EQ(infer::load_chat_template(path, tokenizer).assistant, "<｜Assistant｜>");
  // Another family: refused, naming the file.
  write_file_atomic(path, R"({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"})");
  std::string message = testing::error_message([&] { infer::load_chat_template(path, tokenizer); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not DeepSeek's"), std::string::npos) << message;
  write_file_atomic(path, "{broken");
  EXPECT_NE(testing::error_message([&] { infer::load_chat_template(path, tokenizer); }).find("malformed"),
            std::string::npos);
}

TEST(ChatTemplate, TokenizerWithoutRoleTokens) {
  const Tokenizer tokenizer = Tokenizer::from_file(
      std::string(FRUGAL_SOURCE_DIR) + "/tests/golden/tokenizers/en_gpt2_2k.tokenizer.json");
  const std::string message =
      testing::error_message([&] { infer::deepseek_chat_template(tokenizer); });
  EXPECT_NE(message.find("en_gpt2_2k.tokenizer.json"), std::string::npos) << message;
  EXPECT_NE(message.find("token"), std::string::npos) << message;
}

}  // namespace
}  // namespace frugal
