// The OpenAI HTTP API's JSON, independent of any HTTP library: request parsing and validation
// for /v1/completions and /v1/chat/completions, the response and stream-chunk objects, the
// server-sent-event framing and the error object.
//
// Errors: every rejected request becomes an ApiError, rendered as OpenAI does:
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens" | null,
//              "code": "..." | null}}
// with the HTTP status it carries (400 bad request, 401 bad API key, 404 unknown model or path,
// 413 body too large, 429 busy, 500 internal, 504 generation timed out).
//
// Accepted request fields (anything else is ignored, as OpenAI's clients send extra fields):
//   model (required, must be the served model), prompt (completions: a string, one string in an
//   array, or token ids) / messages (chat: system, developer (= system), user and assistant
//   messages with string content or text parts), max_tokens (chat also max_completion_tokens;
//   1..limit; default 16 for completions and the limit for chat), temperature [0, 2], top_p
//   [0, 1] (0 = keep only the most probable token), top_k >= 0 (an extension; -1 = off), seed,
//   stop (a string or up to 4), n = 1, stream, stream_options.include_usage.
// Fields asking for what this server does not do (n > 1, best_of > 1, logprobs, echo, suffix,
// tools, functions, logit_bias, penalties, a non-text response_format) are a 400 naming them,
// never silently ignored.
//
// Streams: each event is "data: <json>\n\n" and the stream ends with "data: [DONE]\n\n".
// Chat streams open with a chunk whose delta is {"role": "assistant", "content": ""}; the last
// content chunk is followed by one with an empty delta and the finish_reason; with
// stream_options.include_usage a final chunk has "choices": [] and the usage.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "infer/generation_service.h"

namespace frugal {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" renders as null
  std::string code;   // "" renders as null
};

class ApiException : public std::runtime_error {
 public:
  explicit ApiException(ApiError error) : std::runtime_error(error.message), error_(std::move(error)) {}
  const ApiError& error() const { return error_; }

 private:
  ApiError error_;
};

// {"error": {...}}: as JSON (a stream's error event) and as a string (a response body).
nlohmann::json error_json(const ApiError& error);
std::string error_body(const ApiError& error);

struct RequestLimits {
  int64_t max_prompt_tokens = 4096;  // longer prompts: 400, code context_length_exceeded
  int64_t max_tokens = 512;          // largest max_tokens; the chat default
  int64_t default_completion_tokens = 16;
  size_t max_stop_strings = 4;
  size_t max_stop_bytes = 256;       // per stop string
  size_t max_messages = 1024;
};

enum class Endpoint { kCompletions, kChatCompletions };

struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  GenerationRequest generation;
  bool stream = false;
  bool include_usage = false;
};

// Parses and validates a request body (tokenizing the prompt with `service`); throws
// ApiException. `default_seed` is used when the request gives none.
ApiRequest parse_api_request(Endpoint endpoint, std::string_view body,
                             const GenerationService& service, const RequestLimits& limits,
                             uint64_t default_seed);

// Serializes JSON for the wire (ill-formed UTF-8 cannot occur in what we build, but is replaced
// rather than thrown on).
std::string dump_json(const nlohmann::json& value);

// One server-sent event: "data: <json>\n\n".
std::string sse_event(const nlohmann::json& value);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// /v1/models and /v1/models/{id}.
nlohmann::json model_object(const std::string& model, int64_t created);
nlohmann::json models_list(const std::string& model, int64_t created);

// The objects of one response: "cmpl-..." / "chatcmpl-..." ids, text_completion /
// chat.completion / chat.completion.chunk objects.
class ResponseFormatter {
 public:
  ResponseFormatter(Endpoint endpoint, std::string id, int64_t created, std::string model)
      : endpoint_(endpoint), id_(std::move(id)), created_(created), model_(std::move(model)) {}

  nlohmann::json full(const std::string& text, const std::string& finish_reason,
                      int64_t prompt_tokens, int64_t completion_tokens) const;
  // Stream chunks.
  nlohmann::json role_chunk() const;  // chat only
  nlohmann::json text_chunk(const std::string& text) const;
  nlohmann::json finish_chunk(const std::string& finish_reason) const;
  nlohmann::json usage_chunk(int64_t prompt_tokens, int64_t completion_tokens) const;

 private:
  nlohmann::json chunk_base() const;
  static nlohmann::json usage(int64_t prompt_tokens, int64_t completion_tokens);

  Endpoint endpoint_;
  std::string id_;
  int64_t created_;
  std::string model_;
};

}  // namespace frugal
