// EngineService: the inference engine on one engine thread behind GenerationService (see
// engine_service.h).
#include "infer/engine_service.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>

#include "data/byte_tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "infer/inference_model.h"
#include "infer/text_stream.h"
#include "train/checkpoint.h"
#ifdef FRUGAL_HAVE_CUDA
#include "core/device_context.h"
#include "infer/gpu/gpu_inference_model.h"
#endif

extern "C" void openblas_set_num_threads(int);

namespace frugal {

namespace {

constexpr const char* kPlainUser = "User: ";
constexpr const char* kPlainAssistant = "Assistant:";
constexpr const char* kTurnSeparator = "\n\n";

}  // namespace

void check_generation_device(const std::string& device, const std::string& weights) {
  if (device == "cpu") {
    FRUGAL_CHECK(weights.empty(), "--weights {} applies to --device cuda only (the CPU runs fp32)",
                 weights);
    return;
  }
  FRUGAL_CHECK(device == "cuda", "--device '{}': expected cpu or cuda", device);
#ifdef FRUGAL_HAVE_CUDA
  if (!weights.empty()) infer::parse_decode_weights(weights);  // throws naming the value
#else
  fail("--device cuda: this frugal was built without CUDA; rebuild with the CUDA toolkit "
       "(cmake -DFRUGAL_CUDA=ON) or use --device cpu");
#endif
}

struct GenerationBackend::Impl {
  std::unique_ptr<infer::InferenceModel> cpu;
#ifdef FRUGAL_HAVE_CUDA
  ModelConfig config;  // the GPU model's, independent of the host model's lifetime
  // Declared before the model, destroyed after it.
  std::unique_ptr<cuda::DeviceContext> context;
  std::unique_ptr<infer::GpuInferenceModel> gpu;
#endif
};

GenerationBackend::GenerationBackend(const Transformer<float>& model, const std::string& device,
                                     const std::string& weights)
    : impl_(std::make_unique<Impl>()) {
  check_generation_device(device, weights);
  if (device == "cpu") {
    impl_->cpu = std::make_unique<infer::InferenceModel>(model);
    return;
  }
#ifdef FRUGAL_HAVE_CUDA
  infer::GpuInferenceOptions options;
  options.weights = weights.empty() ? infer::DecodeWeights::Bf16
                                    : infer::parse_decode_weights(weights);
  impl_->config = model.config();
  impl_->context = std::make_unique<cuda::DeviceContext>(0);
  impl_->gpu = std::make_unique<infer::GpuInferenceModel>(*impl_->context, impl_->config,
                                                          infer::weights_of(model), options);
#endif
}

GenerationBackend::~GenerationBackend() = default;

const infer::GenerationModel& GenerationBackend::model() const {
#ifdef FRUGAL_HAVE_CUDA
  if (impl_->gpu) return *impl_->gpu;
#endif
  return *impl_->cpu;
}

std::string GenerationBackend::describe() const { return model().describe(); }

// One generate() call. The engine thread owns the fields marked so; the rest are under mutex_.
struct EngineService::Job {
  infer::Request request;  // settings; prompt and counters are set per submission
  int64_t max_tokens = 0;
  // Engine thread.
  std::vector<int32_t> context;  // prompt + committed tokens (before any shift)
  int64_t committed = 0;         // tokens committed so far
  int64_t engine_id = -1;        // current engine request, -1 when not in the engine
  // Under mutex_.
  std::deque<int32_t> tokens;  // committed, not yet taken by generate()
  bool finished = false;
  infer::FinishReason reason = infer::FinishReason::kLength;
  std::exception_ptr error;
  bool cancelled = false;
  std::condition_variable ready;
};

std::unique_ptr<EngineService> EngineService::load(const std::string& path,
                                                   const std::string& model_name,
                                                   EngineServiceOptions options) {
  check_generation_device(options.device, options.weights);  // before a long load
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
  return std::make_unique<EngineService>(std::move(model), std::move(tokenizer), name,
                                         config.train.seq_len, options);
}

EngineService::EngineService(std::unique_ptr<Transformer<float>> model,
                             std::optional<Tokenizer> tokenizer, std::string model_name,
                             int64_t context_length, EngineServiceOptions options)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      model_name_(std::move(model_name)),
      context_length_(context_length),
      options_(options) {
  FRUGAL_CHECK(model_ != nullptr, "EngineService needs a model");
  FRUGAL_CHECK(context_length_ >= 1, "model {}: context length {} must be >= 1", model_name_,
               context_length_);
  const ModelConfig& cfg = model_->config();
  window_ = std::max<int64_t>(2, std::min(context_length_, cfg.max_position_embeddings));
  const int64_t model_vocab = cfg.vocab_size;
  tokenizer_vocab_ = tokenizer_ ? tokenizer_->vocab_size() : ByteTokenizer::kVocabSize;
  FRUGAL_CHECK(model_vocab >= tokenizer_vocab_,
               "model {}: vocab_size = {} is smaller than the tokenizer's {} ids", model_name_,
               model_vocab, tokenizer_vocab_);
  eos_ = tokenizer_ ? tokenizer_->eos_id().value_or(-1) : ByteTokenizer::kEos;
  for (int64_t v = tokenizer_vocab_; v < model_vocab; ++v)
    suppressed_.push_back(static_cast<int32_t>(v));
  if (tokenizer_) {
    for (SpecialRole role : {SpecialRole::kBos, SpecialRole::kPad, SpecialRole::kFimBegin,
                             SpecialRole::kFimHole, SpecialRole::kFimEnd, SpecialRole::kUser,
                             SpecialRole::kAssistant})
      if (auto id = tokenizer_->special_id(role); id && *id != eos_) suppressed_.push_back(*id);
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
    suppressed_.push_back(ByteTokenizer::kBos);
    suppressed_.push_back(ByteTokenizer::kPad);
  }
  std::sort(suppressed_.begin(), suppressed_.end());
  suppressed_.erase(std::unique(suppressed_.begin(), suppressed_.end()), suppressed_.end());

  infer::EngineOptions engine_options;
  engine_options.max_batch = options_.max_batch;
  engine_options.cache_tokens = options_.cache_tokens;
  engine_options.max_context = window_;
  engine_options.speculative = options_.speculative;
  engine_options.on_token = [this](int64_t id, int32_t token) { step_tokens_.emplace_back(id, token); };
  backend_ = std::make_unique<GenerationBackend>(*model_, options_.device, options_.weights);
  engine_ = std::make_unique<infer::Engine>(backend_->model(), std::move(engine_options));
  engine_thread_ = std::thread([this] { engine_thread_main(); });
}

EngineService::~EngineService() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  engine_thread_.join();
}

infer::EngineStats EngineService::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

int64_t EngineService::requests_in_engine() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return in_engine_;
}

void EngineService::submit_to_engine(const std::shared_ptr<Job>& job) {
  // A context that fills the window keeps its last half (frugal generate's context shift).
  if (static_cast<int64_t>(job->context.size()) >= window_)
    job->context.erase(job->context.begin(), job->context.end() - window_ / 2);
  job->request.prompt = job->context;
  job->request.first_counter = static_cast<uint64_t>(job->committed);
  job->request.max_new_tokens = job->max_tokens - job->committed;
  job->engine_id = engine_->submit(job->request);
  running_[job->engine_id] = job;
}

void EngineService::engine_thread_main() {
  if (options_.threads > 0) {
    omp_set_num_threads(options_.threads);
    openblas_set_num_threads(options_.threads);
  }
  for (;;) {
    std::deque<std::shared_ptr<Job>> submissions;
    std::vector<std::shared_ptr<Job>> cancellations;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] {
        return stopping_ || !submissions_.empty() || !cancellations_.empty() || !running_.empty();
      });
      if (stopping_) {
        const auto error = std::make_exception_ptr(
            Error("model " + model_name_ + ": the generation service is shutting down"));
        std::vector<std::shared_ptr<Job>> left(submissions_.begin(), submissions_.end());
        for (auto& [id, job] : running_) left.push_back(job);
        for (auto& job : left) {
          job->error = error;
          job->ready.notify_all();
        }
        return;
      }
      submissions.swap(submissions_);
      cancellations.swap(cancellations_);
    }
    // New requests first, so that one cancelled at once is submitted and then dropped.
    std::vector<std::pair<std::shared_ptr<Job>, std::exception_ptr>> rejected;
    for (auto& job : submissions) {
      try {
        submit_to_engine(job);
      } catch (...) {
        rejected.emplace_back(job, std::current_exception());
      }
    }
    for (auto& job : cancellations) {
      if (job->engine_id < 0 || running_.erase(job->engine_id) == 0) continue;
      engine_->cancel(job->engine_id);
      job->engine_id = -1;
    }

    // One step over every request in the engine.
    step_tokens_.clear();
    std::exception_ptr step_error;
    std::vector<infer::Completion> completions;
    if (!running_.empty()) {
      try {
        engine_->step();
        completions = engine_->take_finished();
      } catch (...) {
        step_error = std::current_exception();
      }
    }
    // (Every job delivered to stays alive: in running_, finished or rejected.)
    std::vector<std::pair<Job*, int32_t>> deliveries;
    for (const auto& [id, token] : step_tokens_) {
      Job* job = running_.at(id).get();
      job->context.push_back(token);
      ++job->committed;
      deliveries.emplace_back(job, token);
    }
    std::vector<std::pair<std::shared_ptr<Job>, infer::FinishReason>> finished;
    for (const infer::Completion& c : completions) {
      auto it = running_.find(c.id);
      if (it == running_.end()) continue;
      std::shared_ptr<Job> job = std::move(it->second);
      running_.erase(it);
      job->engine_id = -1;
      if (c.reason == infer::FinishReason::kContext && job->committed < job->max_tokens) {
        try {
          submit_to_engine(job);  // shift the context and go on
        } catch (...) {
          rejected.emplace_back(job, std::current_exception());
        }
        continue;
      }
      finished.emplace_back(std::move(job), c.reason);
    }
    if (step_error) {  // the engine's state is unknown: every request in it fails
      for (auto& [id, job] : running_) {
        engine_->cancel(id);
        job->engine_id = -1;
        rejected.emplace_back(job, step_error);
      }
      running_.clear();
    }

    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [job, token] : deliveries) job->tokens.push_back(token);
    for (const auto& [job, token] : deliveries) job->ready.notify_all();
    for (auto& [job, reason] : finished) {
      job->finished = true;
      job->reason = reason;
      job->ready.notify_all();
    }
    for (auto& [job, error] : rejected) {
      job->error = error;
      job->ready.notify_all();
    }
    stats_ = engine_->stats();
    in_engine_ = engine_->active() + engine_->waiting();
  }
}

std::string EngineService::token_bytes(int32_t token) const {
  if (!tokenizer_) return ByteTokenizer().decode(&token, 1);
  std::optional<std::string> piece = tokenizer_->id_to_token(token);
  if (!piece) return "";
  std::string bytes;
  if (tok::byte_level_to_bytes(*piece, bytes)) return bytes;
  return *piece;  // a token outside the byte-level alphabet (an added token) stands for itself
}

std::vector<int32_t> EngineService::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  if (eos_ >= 0) ids.push_back(eos_);
  for (int32_t t : tokenizer_ ? tokenizer_->encode(text) : ByteTokenizer().encode(text))
    ids.push_back(t);
  return ids;
}

std::vector<int32_t> EngineService::encode_chat(const std::vector<ChatMessage>& messages) const {
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

std::vector<std::string> EngineService::chat_stop_strings() const {
  if (chat_tokens_) return {};
  return {std::string(kTurnSeparator) + "User:"};
}

infer::Request EngineService::engine_request(const GenerationRequest& request) const {
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
  infer::Request r;
  r.prompt = request.prompt;
  r.sampling = SamplingParams{request.temperature, request.top_k, request.top_p};
  r.seed = request.seed;
  r.max_new_tokens = request.max_tokens;
  if (eos_ >= 0) r.eos_tokens = {eos_};
  else r.ignore_eos = true;  // a tokenizer without one: generation ends at max_tokens
  r.suppressed_tokens = suppressed_;
  return r;
}

void EngineService::cancel(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (job->cancelled || job->finished || job->error) return;
    job->cancelled = true;
    cancellations_.push_back(job);
  }
  work_ready_.notify_one();
}

void EngineService::generate(const GenerationRequest& request, const DeltaCallback& on_delta) {
  auto job = std::make_shared<Job>();
  job->request = engine_request(request);  // throws for a bad request, before any delta
  job->max_tokens = request.max_tokens;
  job->context = request.prompt;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    FRUGAL_CHECK(!stopping_, "model {}: the generation service is shutting down", model_name_);
    submissions_.push_back(job);
  }
  work_ready_.notify_one();
  // Leaving early (cancelled, a stop string, an exception from on_delta) drops the request.
  struct CancelOnExit {
    EngineService* service;
    const std::shared_ptr<Job>& job;
    ~CancelOnExit() { service->cancel(job); }
  } cancel_on_exit{this, job};

  TokenTextDecoder decoder([this](int32_t t) { return token_bytes(t); });
  StopStringFilter filter(request.stop);
  GenerationDelta delta;
  delta.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  std::string finish_reason = "length";
  bool stop_string_seen = false;
  int64_t sampled = 0;
  for (bool finished = false; !finished && !stop_string_seen;) {
    std::deque<int32_t> tokens;
    infer::FinishReason reason = infer::FinishReason::kLength;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      job->ready.wait(lock, [&] { return !job->tokens.empty() || job->finished || job->error; });
      if (job->error) std::rethrow_exception(job->error);
      tokens.swap(job->tokens);
      finished = job->finished;
      reason = job->reason;
    }
    for (int32_t token : tokens) {
      delta.completion_tokens = ++sampled;
      delta.token = token;
      delta.text = filter.push(decoder.push(token), stop_string_seen);
      if (stop_string_seen) {  // delta.text: the text before the stop string, sent as done
        finish_reason = "stop";
        break;
      }
      if (!on_delta(delta)) return;
    }
    if (finished && !stop_string_seen && reason == infer::FinishReason::kEos) {
      delta.completion_tokens = ++sampled;  // the end-of-sequence token: counted, not shown
      finish_reason = "stop";
    }
  }
  delta.token = -1;
  if (!stop_string_seen) {
    // What was held back: an incomplete character, or text that might have begun a stop string.
    delta.text = filter.push(decoder.finish(), stop_string_seen);
    if (stop_string_seen) finish_reason = "stop";
    else delta.text += filter.finish();
  }
  delta.done = true;
  delta.finish_reason = finish_reason;
  on_delta(delta);
}

}  // namespace frugal
