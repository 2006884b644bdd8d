// OpenAI request validation and response objects (see openai_protocol.h).
#include "infer/server/openai_protocol.h"

#include <fmt/format.h>

#include <limits>

namespace frugal {

using nlohmann::json;

namespace {

[[noreturn]] void reject(const std::string& param, const std::string& message,
                         const std::string& code = "") {
  throw ApiException(ApiError{400, message, "invalid_request_error", param, code});
}

// The field, or nullptr when it is absent or null (OpenAI treats null as "use the default").
const json* field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t integer_value(const json& value, const std::string& name) {
  if (!value.is_number_integer())
    reject(name, fmt::format("'{}' must be an integer, got {}", name, value.type_name()));
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    return u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? std::numeric_limits<int64_t>::max()
               : static_cast<int64_t>(u);
  }
  return value.get<int64_t>();
}

double number_value(const json& value, const std::string& name, double low, double high) {
  if (!value.is_number())
    reject(name, fmt::format("'{}' must be a number, got {}", name, value.type_name()));
  const double x = value.get<double>();
  if (!(x >= low && x <= high))
    reject(name, fmt::format("'{}' = {} is outside [{}, {}]", name, x, low, high));
  return x;
}

bool bool_value(const json& value, const std::string& name) {
  if (!value.is_boolean())
    reject(name, fmt::format("'{}' must be a boolean, got {}", name, value.type_name()));
  return value.get<bool>();
}

void unsupported_if(bool condition, const std::string& name, const std::string& what) {
  if (condition)
    reject(name, fmt::format("'{}' {} is not supported by this server", name, what),
           "unsupported_parameter");
}

// Parameters this server does not implement: reject any value that asks for them.
void reject_unsupported(const json& body) {
  if (const json* n = field(body, "n"))
    unsupported_if(!n->is_number_integer() || n->get<int64_t>() != 1, "n", "other than 1");
  if (const json* best_of = field(body, "best_of"))
    unsupported_if(!best_of->is_number_integer() || best_of->get<int64_t>() != 1, "best_of",
                   "other than 1");
  if (const json* logprobs = field(body, "logprobs"))
    unsupported_if(!(*logprobs == false || *logprobs == 0), "logprobs", "(log probabilities)");
  if (const json* top = field(body, "top_logprobs"))
    unsupported_if(!(*top == 0), "top_logprobs", "(log probabilities)");
  if (const json* echo = field(body, "echo")) unsupported_if(*echo != false, "echo", "= true");
  if (const json* suffix = field(body, "suffix"))
    unsupported_if(*suffix != "", "suffix", "(insertion)");
  for (const char* name : {"tools", "functions"})
    if (const json* tools = field(body, name))
      unsupported_if(!(tools->is_array() && tools->empty()), name, "(tool calls)");
  if (const json* choice = field(body, "tool_choice"))
    unsupported_if(*choice != "none", "tool_choice", "(tool calls)");
  if (const json* choice = field(body, "function_call"))
    unsupported_if(*choice != "none", "function_call", "(tool calls)");
  if (const json* bias = field(body, "logit_bias"))
    unsupported_if(!(bias->is_object() && bias->empty()), "logit_bias", "(non-empty)");
  for (const char* name : {"presence_penalty", "frequency_penalty"})
    if (const json* penalty = field(body, name))
      unsupported_if(!(penalty->is_number() && penalty->get<double>() == 0), name,
                     "(other than 0)");
  if (const json* format = field(body, "response_format"))
    unsupported_if(!(format->is_object() && format->value("type", json()) == "text"),
                   "response_format", "(other than {\"type\": \"text\"})");
}

std::vector<int32_t> token_ids(const json& array, const GenerationService& service) {
  std::vector<int32_t> ids;
  for (const json& t : array) {
    const int64_t id = integer_value(t, "prompt");
    if (id < 0 || id >= service.vocab_size())
      reject("prompt", fmt::format("prompt token {} is outside the vocabulary [0, {})", id,
                                   service.vocab_size()));
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

std::vector<int32_t> completion_prompt(const json& body, const GenerationService& service) {
  const json* prompt = field(body, "prompt");
  if (prompt == nullptr) reject("prompt", "you must provide a 'prompt'");
  if (prompt->is_string()) return service.encode(prompt->get<std::string>());
  if (!prompt->is_array())
    reject("prompt", fmt::format("'prompt' must be a string, an array of strings or an array of "
                                 "token ids, got {}", prompt->type_name()));
  if (prompt->empty()) reject("prompt", "'prompt' is an empty array");
  const json& first = prompt->front();
  if (first.is_number_integer()) return token_ids(*prompt, service);
  if (prompt->size() != 1)
    reject("prompt", "batched prompts (an array of several prompts) are not supported; send one "
                     "prompt per request");
  if (first.is_string()) return service.encode(first.get<std::string>());
  if (first.is_array() && !first.empty()) return token_ids(first, service);
  reject("prompt", "'prompt' must be a string, an array of strings or an array of token ids");
}

std::string message_content(const json& message, size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  const json* content = field(message, "content");
  if (content == nullptr) reject(param, "a message needs 'content' (tool calls are not supported)");
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array())
    reject(param, fmt::format("'content' must be a string or an array of text parts, got {}",
                              content->type_name()));
  std::string text;
  for (const json& part : *content) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string())
      reject(param, "only text content parts ({\"type\": \"text\", \"text\": \"...\"}) are "
                    "supported");
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> chat_messages(const json& body, const RequestLimits& limits) {
  const json* messages = field(body, "messages");
  if (messages == nullptr) reject("messages", "you must provide 'messages'");
  if (!messages->is_array())
    reject("messages", fmt::format("'messages' must be an array, got {}", messages->type_name()));
  if (messages->empty()) reject("messages", "'messages' must not be empty");
  if (messages->size() > limits.max_messages)
    reject("messages", fmt::format("{} messages exceed this server's limit of {}",
                                   messages->size(), limits.max_messages));
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!m.is_object()) reject(param, "each message must be an object");
    const json* role = field(m, "role");
    if (role == nullptr || !role->is_string()) reject(param + ".role", "a message needs a 'role' string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant")
      reject(param + ".role",
             fmt::format("role '{}' is not supported (system, developer, user, assistant)", r));
    out.push_back({r, message_content(m, i)});
  }
  return out;
}

std::vector<std::string> stop_strings(const json& body, const RequestLimits& limits) {
  const json* stop = field(body, "stop");
  std::vector<std::string> out;
  if (stop == nullptr) return out;
  if (stop->is_string()) {
    out.push_back(stop->get<std::string>());
  } else if (stop->is_array()) {
    for (const json& s : *stop) {
      if (!s.is_string()) reject("stop", "'stop' must be a string or an array of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    reject("stop", fmt::format("'stop' must be a string or an array of strings, got {}",
                               stop->type_name()));
  }
  if (out.size() > limits.max_stop_strings)
    reject("stop", fmt::format("at most {} stop strings are allowed, got {}",
                               limits.max_stop_strings, out.size()));
  for (const std::string& s : out) {
    if (s.empty()) reject("stop", "stop strings must not be empty");
    if (s.size() > limits.max_stop_bytes)
      reject("stop", fmt::format("a stop string of {} bytes exceeds the limit of {}", s.size(),
                                 limits.max_stop_bytes));
  }
  return out;
}

}  // namespace

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_json(const ApiError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json() : json(error.param)},
            {"code", error.code.empty() ? json() : json(error.code)}};
  return json{{"error", e}};
}

std::string error_body(const ApiError& error) { return dump_json(error_json(error)); }

ApiRequest parse_api_request(Endpoint endpoint, std::string_view body,
                             const GenerationService& service, const RequestLimits& limits,
                             uint64_t default_seed) {
  json root = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded())
    reject("", "could not parse the JSON body of the request (it must be one JSON object in "
               "UTF-8)");
  if (!root.is_object())
    reject("", fmt::format("the request body must be a JSON object, got {}", root.type_name()));

  const json* model = field(root, "model");
  if (model == nullptr || !model->is_string()) reject("model", "you must provide a 'model' string");
  if (model->get<std::string>() != service.model_name())
    throw ApiException(ApiError{404,
                                fmt::format("the model '{}' does not exist; this server serves '{}'",
                                            model->get<std::string>(), service.model_name()),
                                "invalid_request_error", "model", "model_not_found"});
  reject_unsupported(root);

  ApiRequest request;
  request.endpoint = endpoint;
  GenerationRequest& gen = request.generation;
  if (const json* stream = field(root, "stream")) request.stream = bool_value(*stream, "stream");
  if (const json* options = field(root, "stream_options")) {
    if (!request.stream) reject("stream_options", "'stream_options' needs 'stream': true");
    if (!options->is_object()) reject("stream_options", "'stream_options' must be an object");
    if (const json* usage = field(*options, "include_usage"))
      request.include_usage = bool_value(*usage, "stream_options.include_usage");
  }

  const bool chat = endpoint == Endpoint::kChatCompletions;
  gen.max_tokens = chat ? limits.max_tokens
                        : std::min(limits.default_completion_tokens, limits.max_tokens);
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (!chat && std::string_view(name) == "max_completion_tokens") continue;
    if (const json* max_tokens = field(root, name)) {
      const int64_t n = integer_value(*max_tokens, name);
      if (n < 1) reject(name, fmt::format("'{}' = {} must be at least 1", name, n));
      if (n > limits.max_tokens)
        reject(name, fmt::format("'{}' = {} exceeds this server's limit of {} tokens", name, n,
                                 limits.max_tokens));
      gen.max_tokens = n;
    }
  }
  gen.temperature = 1.0;
  if (const json* t = field(root, "temperature")) gen.temperature = number_value(*t, "temperature", 0, 2);
  gen.top_p = 1.0;
  gen.top_k = 0;
  if (const json* p = field(root, "top_p")) {
    gen.top_p = number_value(*p, "top_p", 0, 1);
    if (gen.top_p == 0) {  // only the most probable token
      gen.top_p = 1.0;
      gen.top_k = 1;
    }
  }
  if (const json* k = field(root, "top_k")) {
    const int64_t top_k = integer_value(*k, "top_k");
    if (top_k < -1) reject("top_k", fmt::format("'top_k' = {} must be >= 0 (or -1 = off)", top_k));
    if (top_k > 0 && gen.top_k != 1) gen.top_k = top_k;
  }
  gen.seed = default_seed;
  if (const json* seed = field(root, "seed")) {
    if (!seed->is_number_integer()) reject("seed", "'seed' must be an integer");
    gen.seed = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                          : static_cast<uint64_t>(seed->get<int64_t>());
  }
  gen.stop = stop_strings(root, limits);

  if (chat) {
    gen.prompt = service.encode_chat(chat_messages(root, limits));
    for (const std::string& s : service.chat_stop_strings()) gen.stop.push_back(s);
  } else {
    gen.prompt = completion_prompt(root, service);
  }
  const char* prompt_param = chat ? "messages" : "prompt";
  if (gen.prompt.empty()) reject(prompt_param, "the prompt has no tokens");
  if (static_cast<int64_t>(gen.prompt.size()) > limits.max_prompt_tokens)
    reject(prompt_param,
           fmt::format("the prompt has {} tokens; this server accepts at most {}",
                       gen.prompt.size(), limits.max_prompt_tokens),
           "context_length_exceeded");
  return request;
}

std::string sse_event(const json& value) { return "data: " + dump_json(value) + "\n\n"; }

json model_object(const std::string& model, int64_t created) {
  return {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "frugal"}};
}

json models_list(const std::string& model, int64_t created) {
  return {{"object", "list"}, {"data", json::array({model_object(model, created)})}};
}

json ResponseFormatter::usage(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json ResponseFormatter::full(const std::string& text, const std::string& finish_reason,
                             int64_t prompt_tokens, int64_t completion_tokens) const {
  json choice;
  if (endpoint_ == Endpoint::kCompletions)
    choice = {{"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  else
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", text}}},
              {"logprobs", nullptr},
              {"finish_reason", finish_reason}};
  return {{"id", id_},
          {"object", endpoint_ == Endpoint::kCompletions ? "text_completion" : "chat.completion"},
          {"created", created_},
          {"model", model_},
          {"system_fingerprint", nullptr},
          {"choices", json::array({choice})},
          {"usage", usage(prompt_tokens, completion_tokens)}};
}

json ResponseFormatter::chunk_base() const {
  return {{"id", id_},
          {"object",
           endpoint_ == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
          {"created", created_},
          {"model", model_},
          {"system_fingerprint", nullptr}};
}

json ResponseFormatter::role_chunk() const {
  json chunk = chunk_base();
  chunk["choices"] = json::array({{{"index", 0},
                                   {"delta", {{"role", "assistant"}, {"content", ""}}},
                                   {"logprobs", nullptr},
                                   {"finish_reason", nullptr}}});
  return chunk;
}

json ResponseFormatter::text_chunk(const std::string& text) const {
  json chunk = chunk_base();
  if (endpoint_ == Endpoint::kCompletions)
    chunk["choices"] = json::array(
        {{{"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
  else
    chunk["choices"] = json::array({{{"index", 0},
                                     {"delta", {{"content", text}}},
                                     {"logprobs", nullptr},
                                     {"finish_reason", nullptr}}});
  return chunk;
}

json ResponseFormatter::finish_chunk(const std::string& finish_reason) const {
  json chunk = chunk_base();
  if (endpoint_ == Endpoint::kCompletions)
    chunk["choices"] = json::array(
        {{{"text", ""}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}});
  else
    chunk["choices"] = json::array({{{"index", 0},
                                     {"delta", json::object()},
                                     {"logprobs", nullptr},
                                     {"finish_reason", finish_reason}}});
  return chunk;
}

json ResponseFormatter::usage_chunk(int64_t prompt_tokens, int64_t completion_tokens) const {
  json chunk = chunk_base();
  chunk["choices"] = json::array();
  chunk["usage"] = usage(prompt_tokens, completion_tokens);
  return chunk;
}

}  // namespace frugal
