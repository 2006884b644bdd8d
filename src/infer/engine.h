// Generation engine: continuous batching over a paged latent KV cache, with optional MTP
// speculative decoding (spec §3.3). CPU reference; one thread of control.
//
// Requests are submitted at any time and wait in FIFO order. Each step():
//   1. admits waiting requests while fewer than max_batch are active and the cache has pages for
//      their unfed tokens;
//   2. gives every active sequence room in the cache for the rows it feeds this step; when pages
//      run out, the most recently admitted sequences are preempted (their cache freed, their
//      tokens kept) and later re-admitted, re-feeding every token (recomputation);
//   3. runs ONE main-model forward over the rows of all active sequences: a new or re-admitted
//      sequence feeds its whole prompt (prefill), a running one its last sampled token, plus its
//      draft when speculating;
//   4. samples each sequence's next token from the logits of its last fed token, with the
//      request's sampling settings and sampling counter = first_counter + number of tokens
//      generated so far (infer/sampler.h), suppressed tokens masked; then checks, after every committed token:
//      EOS (not included in the output), stop strings (output text cut before the stop string),
//      max_new_tokens, and the context limit;
//   5. speculative sequences: with the draft d fed after the last token, the main model's
//      logits at the last token give t. If t == d the draft is accepted and a second token is
//      sampled from the logits at d's row; otherwise d's cache entry is rolled back (truncate).
//      Then the MTP module runs over the newly committed positions (row p: token p+1, main hidden
//      state at p) and its greedy choice for the token after next is the next draft.
// Because every token is sampled from the same logits with the same (seed, counter) whether or
// not a draft was verified alongside it, and the model is row-invariant (inference_model.h), the
// output of a request is bit-identical with or without speculation, alone or batched, preempted
// or not, for every sampling setting. Accepting only exact matches keeps the sampled
// distribution exactly the model's (the acceptance rate below greedy is lower than with
// rejection sampling).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "infer/inference_model.h"
#include "infer/sampler.h"

namespace frugal::infer {

enum class FinishReason { kEos, kLength, kStop, kContext };
std::string_view finish_reason_name(FinishReason reason);  // "eos", "length", "stop", "context"

struct Request {
  std::vector<int32_t> prompt;             // at least one token
  SamplingParams sampling;                 // temperature 0 = greedy
  uint64_t seed = 0;
  uint64_t first_counter = 0;              // sampling counter of the first generated token
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;           // stop strings (need EngineOptions::detokenize)
  std::vector<int32_t> eos_tokens;         // empty: the model's eos_token_id
  bool ignore_eos = false;                 // never stop at an end-of-sequence token
  std::vector<int32_t> suppressed_tokens;  // never sampled nor drafted
};

struct Completion {
  int64_t id = -1;
  std::vector<int32_t> tokens;  // generated: no EOS; up to the token that completed a stop string
  std::string text;             // detokenize(tokens), cut before a stop string ("" without it)
  FinishReason reason = FinishReason::kLength;
  int64_t drafted = 0, accepted = 0;  // speculative drafts verified / accepted
  int64_t preemptions = 0;
};

struct EngineStats {
  int64_t steps = 0;        // main-model forward passes
  int64_t rows = 0;         // rows fed through the main model (prefill + decode + drafts)
  int64_t mtp_rows = 0;     // rows fed through the MTP module
  int64_t generated = 0;    // tokens committed
  int64_t drafted = 0, accepted = 0;
  int64_t preemptions = 0;
  int64_t max_active = 0;   // most sequences in one step
  double acceptance() const { return drafted > 0 ? static_cast<double>(accepted) / drafted : 0.0; }
};

struct EngineOptions {
  int64_t max_batch = 8;     // sequences decoded together
  int64_t page_size = 16;    // positions per cache page
  int64_t cache_tokens = 0;  // cache pool in positions (0: max_batch * max_context)
  int64_t max_context = 0;   // positions per sequence, prompt included (0: max_position_embeddings)
  bool speculative = false;  // MTP draft + verification (needs num_nextn_predict_layers >= 1)
  std::function<std::string(const std::vector<int32_t>&)> detokenize;  // for stop strings and text
  std::function<void(int64_t id, int32_t token)> on_token;             // each committed token
};

class Engine {
 public:
  // Runs the CPU reference model (InferenceModel) over `model`, which must outlive the engine.
  // Throws frugal::Error on bad options (e.g. speculative without an MTP module, a cache smaller
  // than one context).
  Engine(const Transformer<float>& model, EngineOptions options);
  // Runs `model` (CPU or GPU), which must outlive the engine.
  Engine(const GenerationModel& model, EngineOptions options);
  ~Engine();

  // Validates the request (prompt ids in the vocabulary, sampling settings, stop strings) and
  // queues it; returns its id (0, 1, 2, ...). A request with max_new_tokens 0, or whose prompt
  // already fills the context, finishes at once.
  int64_t submit(Request request);
  // One scheduling step (see above). Returns false, doing nothing, when no request is waiting or
  // active.
  bool step();
  // Steps until idle; returns every completion not taken yet, by id.
  std::vector<Completion> run();
  // Completions finished since the last call, by id.
  std::vector<Completion> take_finished();
  // Drops request `id` wherever it is (waiting, active: its cache pages are freed at once, or
  // finished but not taken); it never appears in take_finished(). Returns false for an unknown or
  // already taken id. Not to be called from on_token (i.e. during step()).
  bool cancel(int64_t id);

  const EngineStats& stats() const { return stats_; }
  int64_t active() const { return static_cast<int64_t>(active_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t max_context() const { return max_context_; }
  const PagedLatentCache& cache() const { return cache_; }

 private:
  struct Sequence;
  Engine(std::unique_ptr<GenerationModel> owned, EngineOptions options);
  Engine(std::unique_ptr<GenerationModel> owned, const GenerationModel& model,
         EngineOptions options);
  void preempt(size_t active_index);
  // Appends a committed token (or finishes at EOS); returns true when the sequence finished.
  bool commit(Sequence& s, int32_t token);
  void finish(Sequence& s, FinishReason reason);
  int32_t sample(const Sequence& s, const float* logits, uint64_t counter, bool greedy) const;

  std::unique_ptr<GenerationModel> owned_model_;  // the CPU model of the first constructor
  const GenerationModel& im_;
  EngineOptions options_;
  int64_t max_context_ = 0;
  PagedLatentCache cache_;
  std::unique_ptr<PagedLatentCache> mtp_cache_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> active_;
  std::vector<Completion> finished_;
  int64_t next_id_ = 0;
  EngineStats stats_;
};

}  // namespace frugal::infer
