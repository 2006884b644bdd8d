// Helpers for the serving tests:
//   make_test_checkpoint: a randomly initialised configs/tiny.toml model saved as a run directory
//     (optionally with a tokenizer.json), in milliseconds, without training;
//   FakeService: a GenerationService with a scripted reply, for protocol tests. Token i of a
//     reply is character i of kFakeReply; a reply that reaches the end of the script finishes
//     with "stop" (as if the model sampled its end-of-sequence token, counted as one more token).
//     It records the requests it got, can hold every generation at a gate until released, can
//     sleep per token, and throws frugal::Error for a prompt containing "boom".
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "infer/generation_service.h"
#include "infer/text_stream.h"
#include "io/config_io.h"
#include "train/adamw.h"
#include "train/checkpoint.h"

namespace frugal::testing {

// Saves a fresh random tiny model (seq_len 32 unless overridden) under out_dir (a run directory)
// and returns out_dir.
inline std::string make_test_checkpoint(const std::string& out_dir,
                                        std::vector<std::string> overrides = {},
                                        const std::string& tokenizer_json = "",
                                        uint64_t seed = 7) {
  // Defaults first: later overrides win.
  overrides.insert(overrides.begin(), {"train.seq_len=32", "data.train_path=unused.txt"});
  overrides.push_back("train.out_dir=" + out_dir);
  const Config config =
      load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml", overrides);
  Transformer<float> model(config.model);
  model.init_weights(seed, 0.5);  // large weights: peaked, varied next-token distributions
  AdamW<float> optimizer(config.optim, model.params());
  const std::string dir = save_checkpoint(out_dir, config, model, optimizer, TrainerState{});
  if (!tokenizer_json.empty())
    std::filesystem::copy_file(tokenizer_json, dir + "/tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing);
  return out_dir;
}

inline constexpr const char* kFakeReply = "Hello, world! This is frugal speaking.";

class FakeService : public GenerationService {
 public:
  std::string model_name() const override { return "fake-model"; }
  int64_t context_length() const override { return 64; }
  int64_t vocab_size() const override { return 300; }
  // One token per byte.
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  // "role:content\n" per message.
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages) const override {
    std::string text;
    for (const ChatMessage& m : messages) text += m.role + ":" + m.content + "\n";
    return encode(text);
  }
  std::vector<std::string> chat_stop_strings() const override { return {"<turn>"}; }

  void generate(const GenerationRequest& request, const DeltaCallback& on_delta) override {
    std::string prompt(request.prompt.begin(), request.prompt.end());
    {
      std::unique_lock<std::mutex> lock(mutex_);
      requests_.push_back(request);
      started_order_.push_back(prompt);
      ++started_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return !hold_; });
    }
    FRUGAL_CHECK(prompt.find("boom") == std::string::npos, "fake failure for a 'boom' prompt");
    const std::string reply = kFakeReply;
    StopStringFilter filter(request.stop);
    GenerationDelta delta;
    delta.prompt_tokens = static_cast<int64_t>(request.prompt.size());
    std::string finish = "length";
    bool stopped = false;
    for (int64_t i = 0; i < request.max_tokens; ++i) {
      if (token_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(token_delay_ms_));
      delta.completion_tokens = i + 1;
      const size_t index = static_cast<size_t>(i) % (reply.size() + 1);
      if (index == reply.size() && !endless_) {  // the end-of-sequence token
        finish = "stop";
        break;
      }
      const char c = index == reply.size() ? ' ' : reply[index];
      delta.token = static_cast<unsigned char>(c);
      delta.text = filter.push(std::string(1, c), stopped);
      if (stopped) {
        finish = "stop";
        break;
      }
      if (!on_delta(delta)) {
        std::lock_guard<std::mutex> lock(mutex_);
        ++cancelled_;
        changed_.notify_all();
        return;
      }
    }
    if (!stopped) delta.text = filter.finish();
    delta.token = -1;
    delta.done = true;
    delta.finish_reason = finish;
    on_delta(delta);
    std::lock_guard<std::mutex> lock(mutex_);
    ++finished_;
    changed_.notify_all();
  }

  // Generations wait at the start until release().
  void hold() {
    std::lock_guard<std::mutex> lock(mutex_);
    hold_ = true;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    hold_ = false;
    changed_.notify_all();
  }
  void set_token_delay_ms(int ms) { token_delay_ms_ = ms; }
  // The reply repeats forever instead of ending with the end-of-sequence token.
  void set_endless(bool endless) { endless_ = endless; }

  // Waits until `pred()` holds (true) or 10 s passed (false).
  template <class Pred>
  bool wait_for(Pred pred) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(10), [&] { return pred(*this); });
  }

  int started() const { return started_; }
  int finished() const { return finished_; }
  int cancelled() const { return cancelled_; }
  GenerationRequest last_request() {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_.back();
  }
  std::vector<std::string> started_order() {
    std::lock_guard<std::mutex> lock(mutex_);
    return started_order_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool hold_ = false;
  int started_ = 0, finished_ = 0, cancelled_ = 0;
  int token_delay_ms_ = 0;
  bool endless_ = false;
  std::vector<GenerationRequest> requests_;
  std::vector<std::string> started_order_;
};

}  // namespace frugal::testing
