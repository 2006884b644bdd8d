// DeepSeek chat format (see chat_template.h).
#include "infer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace frugal::infer {

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string system;
  for (const ChatMessage& m : messages)
    if (m.role == "system") system += (system.empty() ? "" : "\n\n") + m.content;
  std::string text = bos + system;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") continue;
    if (m.role == "user") {
      text += user + m.content;
    } else if (m.role == "assistant") {
      text += assistant + m.content + eos;
    } else {
      fail("chat message role \"{}\" is not supported (system, user or assistant)", m.role);
    }
  }
  if (add_generation_prompt) text += assistant;
  return text;
}

ChatTemplate deepseek_chat_template(const Tokenizer& tokenizer) {
  const SpecialTokenNames& names = tokenizer.special_names();
  ChatTemplate t;
  t.bos = names.bos;
  t.eos = names.eos;
  t.user = names.user;
  t.assistant = names.assistant;
  t.origin = "built-in DeepSeek chat format";
  for (SpecialRole role : {SpecialRole::kBos, SpecialRole::kEos, SpecialRole::kUser,
                           SpecialRole::kAssistant})
    FRUGAL_CHECK(!names[role].empty() && tokenizer.special_id(role).has_value(),
                 "{}: the tokenizer has no {} token, which the DeepSeek chat format needs",
                 tokenizer.source(), special_role_name(role));
  return t;
}

bool is_deepseek_chat_template(const std::string& jinja, const ChatTemplate& format) {
  return jinja.find(format.user) != std::string::npos &&
         jinja.find(format.assistant) != std::string::npos;
}

ChatTemplate load_chat_template(const std::string& path, const Tokenizer& tokenizer) {
  ChatTemplate format = deepseek_chat_template(tokenizer);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return format;
  std::ifstream in(path, std::ios::binary);
  FRUGAL_CHECK(in.good(), "{}: cannot read", path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON at byte {}: {}", path, e.byte, e.what());
  }
  FRUGAL_CHECK(config.is_object(), "{}: not a JSON object", path);
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return format;
  std::string jinja;
  if (it->is_string()) {
    jinja = it->get<std::string>();
  } else if (it->is_array()) {  // [{"name": "default", "template": "..."}, ...]
    for (const auto& entry : *it)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        jinja = entry["template"].get<std::string>();
    FRUGAL_CHECK(!jinja.empty(), "{}: chat_template has no \"default\" template", path);
  } else {
    fail("{}: chat_template must be a string or a list of named templates", path);
  }
  FRUGAL_CHECK(is_deepseek_chat_template(jinja, format),
               "{}: the chat_template is not DeepSeek's (it never mentions {} and {}); frugal "
               "renders only DeepSeek's chat format and does not run Jinja templates",
               path, format.user, format.assistant);
  format.origin = path + " (DeepSeek chat template family, rendered by frugal)";
  return format;
}

}  // namespace frugal::infer
