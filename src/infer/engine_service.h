// EngineService: a GenerationService over a frugal checkpoint, generating with the inference
// engine (infer/engine.h: paged latent KV cache, absorbed MLA, continuous batching, optionally MTP
// speculative decoding), as `frugal generate` does, on the CPU or (options.device "cuda") on GPU 0
// (GenerationBackend below).
//
// Threads: one engine thread owns the Engine. generate() (any thread) queues its request under a
// mutex and waits; the engine thread submits queued requests, calls engine.step() while any are
// in flight (so concurrent requests share one batched forward per step) and sleeps on a condition
// variable when idle; each step's committed tokens go to their request's queue and wake its
// generate(), which turns them into text (infer/text_stream.h: UTF-8 and stop-string hold-back)
// and calls on_delta on its own thread. A callback returning false, a stop string in the text, or
// generate() leaving by an exception cancels the request: the engine thread drops it from the
// engine (Engine::cancel), freeing its batch slot and cache pages before the next step.
//
// Results: token i of a completion is sampled from the engine's logits with the request's
// settings, seed and sampling counter i (infer/sampler.h), so a request gives the same tokens
// alone, batched with others, or with speculation.
//
// Context: the engine's window is context_length tokens (the training seq_len, at most
// max_position_embeddings). When prompt + completion fill it, the last half is kept and read
// again from position 0 (a context shift, as in frugal generate) and generation goes on with the
// next sampling counter; a prompt that alone fills the window starts so shifted.
//
// Tokens: the checkpoint's tokenizer.json when present, else the byte tokenizer. Candidates for
// sampling are the tokenizer's ordinary tokens and its end-of-sequence token (BOS, PAD, FIM and
// chat-role tokens, and ids past the tokenizer's vocabulary, are never sampled).
//
// Prompts:
//   encode(text)          = [eos] + tokens(text): the text read as the start of a new document
//                           (training windows see documents after the end-of-document token).
//   encode_chat(messages) with a tokenizer that has BOS, EOS, User and Assistant tokens
//                         (DeepSeek-V3's format):
//                           <bos>{system}\n\n<User>{u1}<Assistant>{a1}<eos><User>{u2}<Assistant>
//                         (system messages joined by "\n\n"; no system: no "\n\n").
//                         Otherwise a plain-text format, after [eos]:
//                           {system}\n\nUser: {u1}\n\nAssistant: {a1}\n\nUser: {u2}\n\nAssistant:
//                         with chat_stop_strings() = {"\n\nUser:"}.
//   Message text is tokenized as it is, so a message may spell a special token.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "data/tokenizer/tokenizer.h"
#include "infer/engine.h"
#include "infer/generation_model.h"
#include "infer/generation_service.h"
#include "model/transformer.h"

namespace frugal {

// Checks a device / weights pair as GenerationBackend takes it, before anything is loaded:
// device "cpu" or "cuda" ("cuda" only in a CUDA build), weights "" or, on "cuda", "bf16" / "fp8".
// Throws frugal::Error naming the value.
void check_generation_device(const std::string& device, const std::string& weights);

// The model a generation runs on, built from a loaded checkpoint model:
//   device "cpu":  the CPU reference (infer::InferenceModel) over `model`, which must outlive the
//                  backend;
//   device "cuda": a cuda::DeviceContext on GPU 0 and an infer::GpuInferenceModel loaded from
//                  `model` (weights "bf16", the default, or "fp8"); the backend owns both, and
//                  `model` is no longer read once the constructor returns.
// Engines built over model() must be destroyed before the backend (their caches live in the
// device context's memory). The GPU model is used by one thread at a time; any thread may use
// it (GPU 0 is every thread's default device).
class GenerationBackend {
 public:
  GenerationBackend(const Transformer<float>& model, const std::string& device = "cpu",
                    const std::string& weights = "");
  ~GenerationBackend();
  GenerationBackend(const GenerationBackend&) = delete;
  GenerationBackend& operator=(const GenerationBackend&) = delete;

  const infer::GenerationModel& model() const;
  // "cpu", or the GPU model's description (device, weight format).
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct EngineServiceOptions {
  int threads = 0;           // compute threads of the engine thread (0 = OpenMP's default)
  int64_t max_batch = 8;     // requests decoded together; more wait in the engine's queue
  int64_t cache_tokens = 0;  // KV cache positions (0: max_batch full contexts)
  bool speculative = false;  // MTP drafts verified by the main model (needs an MTP module)
  std::string device = "cpu";  // "cpu" or "cuda" (GenerationBackend)
  std::string weights{};       // on "cuda": "bf16" (default) or "fp8"
};

class EngineService : public GenerationService {
 public:
  // Loads a checkpoint or run directory (its `latest` checkpoint) like frugal generate. The model
  // name defaults to the run directory's name ("runs/tiny" and "runs/tiny/checkpoint-00000100"
  // are both "tiny").
  static std::unique_ptr<EngineService> load(const std::string& checkpoint_or_run_dir,
                                             const std::string& model_name = "",
                                             EngineServiceOptions options = {});

  // context_length: tokens the model sees (the training seq_len); tokenizer: nullopt = bytes.
  // Throws frugal::Error on bad options (e.g. speculative without an MTP module).
  EngineService(std::unique_ptr<Transformer<float>> model, std::optional<Tokenizer> tokenizer,
                std::string model_name, int64_t context_length, EngineServiceOptions options = {});
  // Requests still generating end with a frugal::Error ("shutting down").
  ~EngineService() override;

  std::string model_name() const override { return model_name_; }
  int64_t context_length() const override { return context_length_; }
  int64_t vocab_size() const override { return tokenizer_vocab_; }
  std::vector<int32_t> encode(const std::string& text) const override;
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages) const override;
  std::vector<std::string> chat_stop_strings() const override;
  void generate(const GenerationRequest& request, const DeltaCallback& on_delta) override;

  // True when encode_chat uses the tokenizer's special tokens (DeepSeek format).
  bool has_chat_tokens() const { return chat_tokens_; }
  // Raw bytes of one token (what the text stream is built from).
  std::string token_bytes(int32_t token) const;
  // The engine request generate() submits for `request` (before any context shift): sampling
  // settings, end-of-sequence token, suppressed tokens; no stop strings (the service finds those
  // in the streamed text). Validates like generate().
  infer::Request engine_request(const GenerationRequest& request) const;
  const Transformer<float>& model() const { return *model_; }
  // Where the engine runs ("cpu", or the GPU model's description).
  std::string device_description() const { return backend_->describe(); }
  // The engine's window (positions per sequence).
  int64_t window() const { return window_; }
  // Engine statistics so far and requests now in the engine (read under the service's lock).
  infer::EngineStats stats() const;
  int64_t requests_in_engine() const;

 private:
  struct Job;
  void engine_thread_main();
  // Engine thread: submits job's context (shifted first when it fills the window).
  void submit_to_engine(const std::shared_ptr<Job>& job);
  void cancel(const std::shared_ptr<Job>& job);

  std::unique_ptr<Transformer<float>> model_;
  std::unique_ptr<GenerationBackend> backend_;  // over model_; outlives engine_
  std::optional<Tokenizer> tokenizer_;
  std::string model_name_;
  int64_t context_length_ = 0;
  int64_t window_ = 0;
  int64_t tokenizer_vocab_ = 0;
  int32_t eos_ = -1;
  bool chat_tokens_ = false;
  int32_t bos_ = -1, user_ = -1, assistant_ = -1;
  std::vector<int32_t> suppressed_;  // never sampled
  EngineServiceOptions options_;

  // Engine thread only.
  std::unique_ptr<infer::Engine> engine_;
  std::vector<std::pair<int64_t, int32_t>> step_tokens_;  // (engine id, token) of this step
  std::unordered_map<int64_t, std::shared_ptr<Job>> running_;  // by engine id

  // Shared, under mutex_.
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;
  std::deque<std::shared_ptr<Job>> submissions_;
  std::vector<std::shared_ptr<Job>> cancellations_;
  infer::EngineStats stats_;
  int64_t in_engine_ = 0;
  bool stopping_ = false;
  std::thread engine_thread_;
};

}  // namespace frugal
