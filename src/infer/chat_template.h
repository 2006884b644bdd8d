// Chat prompts in DeepSeek's format, without a Jinja engine.
//
// Hugging Face models ship their chat format as a Jinja template (tokenizer_config.json
// "chat_template"). frugal does not run Jinja: it recognises DeepSeek's template family by its
// role markers (the template mentions both the user and the assistant token of the tokenizer,
// e.g. "<｜User｜>" and "<｜Assistant｜>") and renders the same layout itself:
//
//   {bos}{system}{user}{u1}{assistant}{a1}{eos}{user}{u2}{assistant}      (generation prompt)
//
// with bos/eos/user/assistant the tokenizer's special tokens (Tokenizer::special_names(); for
// DeepSeek-V3: <｜begin▁of▁sentence｜>, <｜end▁of▁sentence｜>, <｜User｜>, <｜Assistant｜>). Every
// system message goes into the prefix, several joined by "\n\n", as DeepSeek-V3's template does.
// Not rendered: tool calls and tool outputs (an error), and the reasoning-trace stripping of
// R1's template. A tokenizer_config.json without a chat_template gets the same built-in format; a
// template of another family is an error naming the file (no silent misformatting).
#pragma once

#include <string>
#include <vector>

#include "data/tokenizer/tokenizer.h"

namespace frugal::infer {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  std::string bos, eos, user, assistant;  // special-token texts
  std::string origin;                     // where the format came from, for start-up logs

  // The prompt text; add_generation_prompt appends the assistant marker so the model answers.
  // Unknown roles are an error.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
};

// The built-in DeepSeek format with `tokenizer`'s special tokens; an error naming the missing role
// when the tokenizer has no BOS, EOS, user or assistant token.
ChatTemplate deepseek_chat_template(const Tokenizer& tokenizer);

// The same, after checking `tokenizer_config_path` (when the file exists): its chat_template must
// be absent or of DeepSeek's family. Errors name the file.
ChatTemplate load_chat_template(const std::string& tokenizer_config_path, const Tokenizer& tokenizer);

// True when a Jinja chat template belongs to DeepSeek's family for these role tokens.
bool is_deepseek_chat_template(const std::string& jinja, const ChatTemplate& format);

}  // namespace frugal::infer
