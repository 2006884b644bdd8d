// SimpleService: a GenerationService over a frugal checkpoint on the CPU, generating the way
// `frugal generate` does: every token re-runs the model over the whole (sliding) context window
// of context_length tokens, then samples (infer/sampler.h) with counter = token index.
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
//
// Concurrency: one model thread runs every forward pass, first come first served, so concurrent
// generate() calls interleave token by token and OpenMP keeps a single thread team. How many
// requests may generate at once is the caller's business (the server's admission limit).
#pragma once

#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "data/tokenizer/tokenizer.h"
#include "infer/generation_service.h"
#include "model/transformer.h"

namespace frugal {

class SimpleService : public GenerationService {
 public:
  // Loads a checkpoint or run directory (its `latest` checkpoint) like frugal generate. The model
  // name defaults to the run directory's name ("runs/tiny" and "runs/tiny/checkpoint-00000100"
  // are both "tiny"); threads = 0 keeps OpenMP's default.
  static std::unique_ptr<SimpleService> load(const std::string& checkpoint_or_run_dir,
                                             const std::string& model_name = "", int threads = 0);

  // context_length: tokens the model sees (the training seq_len); tokenizer: nullopt = bytes.
  SimpleService(std::unique_ptr<Transformer<float>> model, std::optional<Tokenizer> tokenizer,
                std::string model_name, int64_t context_length, int threads = 0);
  ~SimpleService() override;

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

 private:
  std::vector<float> forward(const std::vector<int32_t>& tokens);  // logits of the last position
  void model_thread_main();

  std::unique_ptr<Transformer<float>> model_;
  std::optional<Tokenizer> tokenizer_;
  std::string model_name_;
  int64_t context_length_ = 0;
  int64_t tokenizer_vocab_ = 0;
  int32_t eos_ = -1;
  bool chat_tokens_ = false;
  int32_t bos_ = -1, user_ = -1, assistant_ = -1;
  std::vector<bool> allowed_;  // [model vocab]: may be sampled

  int threads_ = 0;
  std::mutex jobs_mutex_;
  std::condition_variable jobs_ready_;
  std::deque<std::packaged_task<void()>> jobs_;
  bool stopping_ = false;
  std::thread model_thread_;
};

}  // namespace frugal
