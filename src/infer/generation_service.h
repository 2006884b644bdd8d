// The seam between the HTTP server / terminal chat and whatever generates tokens.
//
// A GenerationService turns a prompt (token ids) into a stream of text deltas. The server and
// `frugal chat` only ever talk to this interface; EngineService (infer/engine_service.h: the
// batching inference engine over a checkpoint) implements it.
//
// Contract of generate():
//   - it may be called from many threads at once; the service schedules the work itself;
//   - on_delta is called on the calling thread, once per sampled token (text may be empty: held
//     back as a possible stop-string start or an incomplete UTF-8 character) and then exactly
//     once with done = true, which carries the rest of the text, finish_reason and the usage;
//   - the concatenated texts are the completion: valid UTF-8 (ill-formed bytes a model may produce
//     become U+FFFD), without the stop string that ended it and without the end-of-sequence token;
//   - finish_reason is "stop" (end-of-sequence token or a stop string) or "length" (max_tokens);
//   - completion_tokens counts every sampled token, the end-of-sequence token included;
//   - on_delta returning false (client gone, deadline passed) cancels: generate() returns soon
//     after, without a done delta;
//   - a request the service cannot serve (empty prompt, token id out of range, bad sampling
//     settings) throws frugal::Error before any delta.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace frugal {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, as encode() / encode_chat() return them
  int64_t max_tokens = 16;      // >= 1: sampled tokens at most (end-of-sequence included)
  double temperature = 1.0;     // 0 = greedy
  double top_p = 1.0;           // (0, 1]
  int64_t top_k = 0;            // 0 = off
  uint64_t seed = 0;            // same seed, prompt and settings -> same completion
  std::vector<std::string> stop;  // non-empty strings; generation ends before the first one
};

struct GenerationDelta {
  std::string text;            // new completion text (may be empty)
  int32_t token = -1;          // the token sampled for this delta; -1 on the done delta
  bool done = false;
  std::string finish_reason;   // on the done delta: "stop" or "length"
  int64_t prompt_tokens = 0;   // on every delta
  int64_t completion_tokens = 0;  // sampled so far
};

// Return false to cancel the generation.
using DeltaCallback = std::function<bool(const GenerationDelta&)>;

class GenerationService {
 public:
  virtual ~GenerationService() = default;

  // The name clients pass as "model".
  virtual std::string model_name() const = 0;
  // Tokens of context the model attends to; longer prompts lose their start.
  virtual int64_t context_length() const = 0;
  // Largest valid token id + 1 (prompts given as token ids are checked against it).
  virtual int64_t vocab_size() const = 0;

  // A completion prompt: the text as the start of a new document.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // A chat prompt: the conversation in the model's chat format, ending where the assistant's
  // next reply begins. Throws frugal::Error for an unknown role.
  virtual std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages) const = 0;
  // Stop strings implied by the chat format (e.g. the next turn's marker in a plain-text
  // format); the server adds them to every chat request.
  virtual std::vector<std::string> chat_stop_strings() const { return {}; }

  virtual void generate(const GenerationRequest& request, const DeltaCallback& on_delta) = 0;
};

}  // namespace frugal
