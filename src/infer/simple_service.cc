// SimpleService: full re-forward per token on one model thread (see simple_service.h).
#include "infer/simple_service.h"

#include <omp.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "data/byte_tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"
#include "train/checkpoint.h"

extern "C" void openblas_set_num_threads(int);

namespace frugal {

namespace {

constexpr const char* kPlainUser = "User: ";
constexpr const char* kPlainAssistant = "Assistant:";
constexpr const char* kTurnSeparator = "\n\n";

}  // namespace

std::unique_ptr<SimpleService> SimpleService::load(const std::string& path,
                                                   const std::string& model_name, int threads) {
  const std::string dir = resolve_checkpoint(path);
  const Config config = load_checkpoint_config(dir);
  std::optional<Tokenizer> tokenizer;
  const std::string tokenizer_path = dir + "/tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) tokenizer = Tokenizer::from_file(tokenizer_path);
  auto model = std::make_unique<Transformer<float>>(config.model);
  load_checkpoint_model(dir, *model);
  std::string name = model_name;
  if (name.empty()) {
    std::filesystem::path p = std::filesystem::absolute(path).lexically_normal();
    if (!p.has_filename()) p = p.parent_path();  // "runs/tiny/" -> "runs/tiny"
    // A checkpoint inside a run directory takes the run's name.
    if (p.filename().string().rfind("checkpoint-", 0) == 0 && p.has_parent_path())
      p = p.parent_path();
    name = p.filename().string();
    if (name.empty() || name == "." || name == "..") name = "frugal";
  }
  return std::make_unique<SimpleService>(std::move(model), std::move(tokenizer), name,
                                         config.train.seq_len, threads);
}

SimpleService::SimpleService(std::unique_ptr<Transformer<float>> model,
                             std::optional<Tokenizer> tokenizer, std::string model_name,
                             int64_t context_length, int threads)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      model_name_(std::move(model_name)),
      context_length_(context_length),
      threads_(threads) {
  FRUGAL_CHECK(model_ != nullptr, "SimpleService needs a model");
  FRUGAL_CHECK(context_length_ >= 1, "model {}: context length {} must be >= 1", model_name_,
               context_length_);
  const int64_t model_vocab = model_->config().vocab_size;
  tokenizer_vocab_ = tokenizer_ ? tokenizer_->vocab_size() : ByteTokenizer::kVocabSize;
  FRUGAL_CHECK(model_vocab >= tokenizer_vocab_,
               "model {}: vocab_size = {} is smaller than the tokenizer's {} ids", model_name_,
               model_vocab, tokenizer_vocab_);
  eos_ = tokenizer_ ? tokenizer_->eos_id().value_or(-1) : ByteTokenizer::kEos;
  allowed_.assign(static_cast<size_t>(model_vocab), false);
  for (int64_t v = 0; v < tokenizer_vocab_; ++v) allowed_[v] = true;
  if (tokenizer_) {
    for (SpecialRole role : {SpecialRole::kBos, SpecialRole::kPad, SpecialRole::kFimBegin,
                             SpecialRole::kFimHole, SpecialRole::kFimEnd, SpecialRole::kUser,
                             SpecialRole::kAssistant})
      if (auto id = tokenizer_->special_id(role)) allowed_[*id] = false;
    auto bos = tokenizer_->special_id(SpecialRole::kBos);
    auto user = tokenizer_->special_id(SpecialRole::kUser);
    auto assistant = tokenizer_->special_id(SpecialRole::kAssistant);
    if (bos && user && assistant && eos_ >= 0) {
      chat_tokens_ = true;
      bos_ = *bos;
      user_ = *user;
      assistant_ = *assistant;
    }
  } else {
    allowed_[ByteTokenizer::kBos] = allowed_[ByteTokenizer::kPad] = false;
  }
  model_thread_ = std::thread([this] { model_thread_main(); });
}

SimpleService::~SimpleService() {
  {
    std::lock_guard<std::mutex> lock(jobs_mutex_);
    stopping_ = true;
  }
  jobs_ready_.notify_all();
  model_thread_.join();
}

void SimpleService::model_thread_main() {
  if (threads_ > 0) {
    omp_set_num_threads(threads_);
    openblas_set_num_threads(threads_);
  }
  for (;;) {
    std::packaged_task<void()> job;
    {
      std::unique_lock<std::mutex> lock(jobs_mutex_);
      jobs_ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and every queued job has run
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

std::vector<float> SimpleService::forward(const std::vector<int32_t>& tokens) {
  // The last context_length tokens: the window the model was trained on.
  const int64_t count = std::min<int64_t>(static_cast<int64_t>(tokens.size()), context_length_);
  const int32_t* window = tokens.data() + tokens.size() - count;
  std::vector<float> logits;
  std::packaged_task<void()> job([&] { logits = model_->last_logits(window, count); });
  std::future<void> done = job.get_future();
  {
    std::lock_guard<std::mutex> lock(jobs_mutex_);
    jobs_.push_back(std::move(job));
  }
  jobs_ready_.notify_one();
  done.get();  // rethrows what the forward threw
  return logits;
}

std::string SimpleService::token_bytes(int32_t token) const {
  if (!tokenizer_) return ByteTokenizer().decode(&token, 1);
  std::optional<std::string> piece = tokenizer_->id_to_token(token);
  if (!piece) return "";
  std::string bytes;
  if (tok::byte_level_to_bytes(*piece, bytes)) return bytes;
  return *piece;  // a token outside the byte-level alphabet (an added token) stands for itself
}

std::vector<int32_t> SimpleService::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  if (eos_ >= 0) ids.push_back(eos_);
  for (int32_t t : tokenizer_ ? tokenizer_->encode(text) : ByteTokenizer().encode(text))
    ids.push_back(t);
  return ids;
}

std::vector<int32_t> SimpleService::encode_chat(const std::vector<ChatMessage>& messages) const {
  std::string system;
  for (const ChatMessage& m : messages) {
    FRUGAL_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant",
                 "chat message role '{}' is not one of system, user, assistant", m.role);
    if (m.role == "system") system += (system.empty() ? "" : kTurnSeparator) + m.content;
  }
  std::vector<int32_t> ids;
  auto append_text = [&](const std::string& text) {
    for (int32_t t : tokenizer_ ? tokenizer_->encode(text) : ByteTokenizer().encode(text))
      ids.push_back(t);
  };
  if (chat_tokens_) {
    ids.push_back(bos_);
    if (!system.empty()) append_text(system + kTurnSeparator);
    for (const ChatMessage& m : messages) {
      if (m.role == "user") {
        ids.push_back(user_);
        append_text(m.content);
      } else if (m.role == "assistant") {
        ids.push_back(assistant_);
        append_text(m.content);
        ids.push_back(eos_);
      }
    }
    ids.push_back(assistant_);
    return ids;
  }
  if (eos_ >= 0) ids.push_back(eos_);
  std::string text = system.empty() ? "" : system + kTurnSeparator;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") text += kPlainUser + m.content + kTurnSeparator;
    else if (m.role == "assistant") text += std::string(kPlainAssistant) + " " + m.content + kTurnSeparator;
  }
  text += kPlainAssistant;
  append_text(text);
  return ids;
}

std::vector<std::string> SimpleService::chat_stop_strings() const {
  if (chat_tokens_) return {};
  return {std::string(kTurnSeparator) + "User:"};
}

void SimpleService::generate(const GenerationRequest& request, const DeltaCallback& on_delta) {
  const int64_t model_vocab = model_->config().vocab_size;
  FRUGAL_CHECK(!request.prompt.empty(), "generate: the prompt has no tokens");
  for (int32_t t : request.prompt)
    FRUGAL_CHECK(t >= 0 && t < model_vocab, "generate: prompt token {} is outside [0, {})", t,
                 model_vocab);
  FRUGAL_CHECK(request.max_tokens >= 1, "generate: max_tokens = {} must be >= 1",
               request.max_tokens);
  FRUGAL_CHECK(std::isfinite(request.temperature) && request.temperature >= 0,
               "generate: temperature = {} must be >= 0", request.temperature);
  FRUGAL_CHECK(request.top_p > 0 && request.top_p <= 1, "generate: top_p = {} must be in (0, 1]",
               request.top_p);
  FRUGAL_CHECK(request.top_k >= 0, "generate: top_k = {} must be >= 0", request.top_k);
  const SamplingParams params{request.temperature, request.top_k, request.top_p};

  std::vector<int32_t> tokens = request.prompt;
  TokenTextDecoder decoder([this](int32_t t) { return token_bytes(t); });
  StopStringFilter filter(request.stop);
  GenerationDelta delta;
  delta.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  std::string finish_reason = "length";
  bool stop_string_seen = false;
  for (int64_t i = 0; i < request.max_tokens; ++i) {
    std::vector<float> logits = forward(tokens);
    for (size_t v = 0; v < logits.size(); ++v)
      if (!allowed_[v]) logits[v] = -std::numeric_limits<float>::infinity();
    const int32_t next = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params,
                                      request.seed, static_cast<uint64_t>(i));
    delta.completion_tokens = i + 1;
    delta.token = next;
    delta.text.clear();
    if (next == eos_) {
      finish_reason = "stop";
      break;
    }
    tokens.push_back(next);
    delta.text = filter.push(decoder.push(next), stop_string_seen);
    if (stop_string_seen) {  // delta.text: the text before the stop string, sent as done
      finish_reason = "stop";
      break;
    }
    if (!on_delta(delta)) return;
    delta.text.clear();
  }
  if (!stop_string_seen) {
    // What was held back: an incomplete character, or text that might have begun a stop string.
    delta.text = filter.push(decoder.finish(), stop_string_seen);
    if (stop_string_seen) finish_reason = "stop";
    else delta.text += filter.finish();
  }
  delta.token = -1;
  delta.done = true;
  delta.finish_reason = finish_reason;
  on_delta(delta);
}

}  // namespace frugal
