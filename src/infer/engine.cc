// Continuous-batching generation engine with MTP speculative decoding (see engine.h).
#include "infer/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace frugal::infer {
namespace {

int64_t resolve_max_context(const ModelConfig& cfg, const EngineOptions& o) {
  const int64_t limit = o.max_context > 0 ? o.max_context : cfg.max_position_embeddings;
  FRUGAL_CHECK(limit >= 2, "engine: max_context {} must be >= 2", limit);
  return limit;
}

int64_t pool_pages(const EngineOptions& o, int64_t max_context) {
  FRUGAL_CHECK(o.page_size > 0, "engine: page_size {} must be positive", o.page_size);
  FRUGAL_CHECK(o.max_batch > 0, "engine: max_batch {} must be positive", o.max_batch);
  const int64_t tokens = o.cache_tokens > 0 ? o.cache_tokens : o.max_batch * max_context;
  const int64_t pages = (tokens + o.page_size - 1) / o.page_size;
  const int64_t one_context = (max_context + o.page_size - 1) / o.page_size;
  FRUGAL_CHECK(pages >= one_context,
               "engine: a cache of {} positions cannot hold one context of {} positions",
               pages * o.page_size, max_context);
  return pages;
}

}  // namespace

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos: return "eos";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kContext: return "context";
  }
  return "?";
}

struct Engine::Sequence {
  int64_t id = 0;
  Request request;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t prompt_length = 0;
  int64_t fed = 0;      // positions whose latent entries are in the main cache
  int64_t mtp_fed = 0;  // positions p whose MTP row (token p+1, hidden p) is in the MTP cache
  int32_t draft = -1;   // speculative guess for token `tokens.size()`, or -1
  int64_t main_seq = -1, mtp_seq = -1;
  int64_t drafted = 0, accepted = 0, preemptions = 0;
  std::vector<int32_t> eos;
  bool done = false;
  Completion completion;

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_length; }
};

Engine::Engine(const Transformer<float>& model, EngineOptions options)
    : Engine(std::make_unique<InferenceModel>(model), std::move(options)) {}

Engine::Engine(const GenerationModel& model, EngineOptions options)
    : Engine(std::unique_ptr<GenerationModel>(), model, std::move(options)) {}

Engine::Engine(std::unique_ptr<GenerationModel> owned, EngineOptions options)
    : Engine(std::move(owned), *owned, std::move(options)) {}

Engine::Engine(std::unique_ptr<GenerationModel> owned, const GenerationModel& model,
               EngineOptions options)
    : owned_model_(std::move(owned)),
      im_(model),
      options_(std::move(options)),
      max_context_(resolve_max_context(model.config(), options_)),
      cache_(im_.make_cache(false, options_.page_size, pool_pages(options_, max_context_))) {
  if (options_.speculative) {
    FRUGAL_CHECK(im_.has_mtp(), "speculative decoding needs an MTP module, and this model has "
                 "num_nextn_predict_layers = 0");
    mtp_cache_ = std::make_unique<PagedLatentCache>(
        im_.make_cache(true, options_.page_size, cache_.total_pages()));
  }
}

Engine::~Engine() = default;

int64_t Engine::submit(Request request) {
  const ModelConfig& cfg = im_.config();
  FRUGAL_CHECK(!request.prompt.empty(), "generation request: the prompt has no tokens");
  for (int32_t t : request.prompt)
    FRUGAL_CHECK(t >= 0 && t < cfg.vocab_size, "generation request: prompt token {} outside the "
                 "vocabulary [0, {})", t, cfg.vocab_size);
  for (const auto* list : {&request.eos_tokens, &request.suppressed_tokens})
    for (int32_t t : *list)
      FRUGAL_CHECK(t >= 0 && t < cfg.vocab_size, "generation request: token {} outside the "
                   "vocabulary [0, {})", t, cfg.vocab_size);
  const SamplingParams& sp = request.sampling;
  FRUGAL_CHECK(std::isfinite(sp.temperature) && sp.temperature >= 0.0,
               "generate.temperature = {} must be >= 0 (0 = greedy)", sp.temperature);
  FRUGAL_CHECK(sp.top_k >= 0, "generate.top_k = {} must be >= 0 (0 = off)", sp.top_k);
  FRUGAL_CHECK(sp.top_p > 0.0 && sp.top_p <= 1.0, "generate.top_p = {} must be in (0, 1]", sp.top_p);
  FRUGAL_CHECK(request.max_new_tokens >= 0, "generate.max_new_tokens = {} must be >= 0",
               request.max_new_tokens);
  for (const std::string& stop : request.stop)
    FRUGAL_CHECK(!stop.empty(), "generation request: a stop string is empty");
  FRUGAL_CHECK(request.stop.empty() || options_.detokenize,
               "generation request: stop strings need a tokenizer (EngineOptions::detokenize)");

  auto s = std::make_unique<Sequence>();
  s->id = next_id_++;
  s->tokens = request.prompt;
  s->prompt_length = static_cast<int64_t>(request.prompt.size());
  if (!request.ignore_eos)
    s->eos = request.eos_tokens.empty()
                 ? std::vector<int32_t>{static_cast<int32_t>(cfg.eos_token_id)}
                 : request.eos_tokens;
  s->request = std::move(request);
  if (s->request.max_new_tokens == 0) {
    finish(*s, FinishReason::kLength);
  } else if (static_cast<int64_t>(s->tokens.size()) >= max_context_) {
    finish(*s, FinishReason::kContext);
  } else {
    const int64_t id = s->id;
    waiting_.push_back(std::move(s));
    return id;
  }
  finished_.push_back(std::move(s->completion));
  return next_id_ - 1;
}

void Engine::finish(Sequence& s, FinishReason reason) {
  s.done = true;
  Completion& c = s.completion;
  c.id = s.id;
  c.tokens.assign(s.tokens.begin() + s.prompt_length, s.tokens.end());
  if (options_.detokenize && reason != FinishReason::kStop) c.text = options_.detokenize(c.tokens);
  c.reason = reason;
  c.drafted = s.drafted;
  c.accepted = s.accepted;
  c.preemptions = s.preemptions;
}

bool Engine::commit(Sequence& s, int32_t token) {
  if (std::find(s.eos.begin(), s.eos.end(), token) != s.eos.end()) {
    finish(s, FinishReason::kEos);
    return true;
  }
  s.tokens.push_back(token);
  ++stats_.generated;
  if (options_.on_token) options_.on_token(s.id, token);
  if (!s.request.stop.empty()) {
    const std::vector<int32_t> generated(s.tokens.begin() + s.prompt_length, s.tokens.end());
    std::string text = options_.detokenize(generated);
    size_t cut = std::string::npos;
    for (const std::string& stop : s.request.stop) cut = std::min(cut, text.find(stop));
    if (cut != std::string::npos) {
      text.resize(cut);
      s.completion.text = std::move(text);
      finish(s, FinishReason::kStop);
      return true;
    }
  }
  if (s.generated() >= s.request.max_new_tokens) {
    finish(s, FinishReason::kLength);
    return true;
  }
  if (static_cast<int64_t>(s.tokens.size()) >= max_context_) {
    finish(s, FinishReason::kContext);
    return true;
  }
  return false;
}

int32_t Engine::sample(const Sequence& s, const float* logits, uint64_t counter, bool greedy) const {
  const int64_t vocab = im_.config().vocab_size;
  std::vector<float> row(logits, logits + vocab);
  for (int32_t t : s.request.suppressed_tokens) row[t] = -std::numeric_limits<float>::infinity();
  SamplingParams params = s.request.sampling;
  if (greedy) params.temperature = 0.0;
  return sample_token(row.data(), vocab, params, s.request.seed, counter);
}

void Engine::preempt(size_t index) {
  std::unique_ptr<Sequence> s = std::move(active_[index]);
  active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(index));
  cache_.close_sequence(s->main_seq);
  if (s->mtp_seq >= 0) mtp_cache_->close_sequence(s->mtp_seq);
  s->main_seq = s->mtp_seq = -1;
  s->fed = s->mtp_fed = 0;
  s->draft = -1;
  ++s->preemptions;
  ++stats_.preemptions;
  waiting_.push_front(std::move(s));  // first in line again
}

bool Engine::step() {
  // 1. Admission: FIFO, while there is a batch slot and the pages for the whole unfed prefix.
  while (!waiting_.empty() && static_cast<int64_t>(active_.size()) < options_.max_batch) {
    Sequence& s = *waiting_.front();
    const int64_t pages = cache_.pages_for(static_cast<int64_t>(s.tokens.size()));
    if (!active_.empty() && pages > cache_.free_pages()) break;
    s.main_seq = cache_.open_sequence();
    if (mtp_cache_) s.mtp_seq = mtp_cache_->open_sequence();
    active_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (active_.empty()) return false;

  // 2. Cache room for this step's rows, preempting from the most recent admission when short.
  for (size_t i = 0; i < active_.size();) {
    Sequence& s = *active_[i];
    const int64_t length = static_cast<int64_t>(s.tokens.size()) + (s.draft >= 0 ? 1 : 0);
    if (cache_.grow(s.main_seq, length)) {
      ++i;
      continue;
    }
    FRUGAL_CHECK(active_.size() > 1, "engine: the cache cannot hold one sequence of {} positions",
                 length);
    preempt(active_.size() - 1);  // possibly s itself, when it is the last one
  }
  stats_.max_active = std::max(stats_.max_active, static_cast<int64_t>(active_.size()));

  // 3. One main-model forward over every active sequence's rows.
  struct Plan {
    int64_t first_row = 0, fed_before = 0, size_before = 0;
    int64_t last_logit = -1, draft_logit = -1;  // indices into the logits rows
  };
  std::vector<Plan> plans(active_.size());
  Rows rows;
  std::vector<int64_t> logit_rows;
  for (size_t i = 0; i < active_.size(); ++i) {
    Sequence& s = *active_[i];
    Plan& p = plans[i];
    p.first_row = rows.size();
    p.fed_before = s.fed;
    p.size_before = static_cast<int64_t>(s.tokens.size());
    for (int64_t pos = s.fed; pos < p.size_before; ++pos) rows.add(s.tokens[pos], pos, s.main_seq);
    p.last_logit = static_cast<int64_t>(logit_rows.size());
    logit_rows.push_back(rows.size() - 1);
    if (s.draft >= 0) {
      rows.add(s.draft, p.size_before, s.main_seq);
      p.draft_logit = static_cast<int64_t>(logit_rows.size());
      logit_rows.push_back(rows.size() - 1);
    }
  }
  std::vector<float> logits, hidden;
  im_.forward(rows, cache_, logit_rows, &logits, mtp_cache_ ? &hidden : nullptr);
  ++stats_.steps;
  stats_.rows += rows.size();

  // 4-5. Sample, verify drafts, commit, roll back rejected drafts.
  const int64_t vocab = im_.config().vocab_size;
  for (size_t i = 0; i < active_.size(); ++i) {
    Sequence& s = *active_[i];
    const Plan& p = plans[i];
    const uint64_t counter = s.request.first_counter + static_cast<uint64_t>(s.generated());
    const int32_t token = sample(s, logits.data() + p.last_logit * vocab, counter, false);
    const bool had_draft = s.draft >= 0, accepted = had_draft && token == s.draft;
    s.draft = -1;
    if (had_draft) {
      ++s.drafted;
      ++stats_.drafted;
    }
    if (commit(s, token)) continue;
    if (accepted) {
      ++s.accepted;
      ++stats_.accepted;
      s.fed = p.size_before + 1;
      const int32_t next = sample(s, logits.data() + p.draft_logit * vocab, counter + 1, false);
      if (commit(s, next)) continue;
    } else {
      s.fed = p.size_before;
      if (had_draft) cache_.truncate(s.main_seq, s.fed);  // forget the rejected draft's entry
    }
  }

  // MTP: the rows of the newly committed positions, then the next drafts.
  if (mtp_cache_) {
    Rows mtp_rows;
    std::vector<float> mtp_hidden;
    std::vector<int64_t> mtp_logit_rows;
    std::vector<size_t> drafting;
    const int64_t d = im_.config().hidden_size;
    for (size_t i = 0; i < active_.size(); ++i) {
      Sequence& s = *active_[i];
      if (s.done) continue;
      const Plan& p = plans[i];
      FRUGAL_CHECK(s.mtp_fed == p.fed_before, "engine: MTP cache out of step");
      FRUGAL_CHECK(mtp_cache_->grow(s.mtp_seq, s.fed), "engine: the MTP cache ran out of pages");
      for (int64_t pos = s.mtp_fed; pos < s.fed; ++pos) {
        mtp_rows.add(s.tokens[pos + 1], pos, s.mtp_seq);
        const float* h = hidden.data() + (p.first_row + pos - p.fed_before) * d;
        mtp_hidden.insert(mtp_hidden.end(), h, h + d);
      }
      s.mtp_fed = s.fed;
      // A draft only pays when at least two more tokens may follow.
      if (s.generated() + 1 < s.request.max_new_tokens) {
        mtp_logit_rows.push_back(mtp_rows.size() - 1);
        drafting.push_back(i);
      }
    }
    if (mtp_rows.size() > 0) {
      std::vector<float> mtp_logits;
      im_.forward_mtp(mtp_rows, mtp_hidden.data(), *mtp_cache_, mtp_logit_rows, &mtp_logits);
      stats_.mtp_rows += mtp_rows.size();
      for (size_t k = 0; k < drafting.size(); ++k) {
        Sequence& s = *active_[drafting[k]];
        s.draft = sample(s, mtp_logits.data() + static_cast<int64_t>(k) * vocab, 0, true);
      }
    }
  }

  // Finished sequences leave the batch.
  for (size_t i = 0; i < active_.size();) {
    if (!active_[i]->done) {
      ++i;
      continue;
    }
    Sequence& s = *active_[i];
    cache_.close_sequence(s.main_seq);
    if (s.mtp_seq >= 0) mtp_cache_->close_sequence(s.mtp_seq);
    finished_.push_back(std::move(s.completion));
    active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
  }
  return true;
}

std::vector<Completion> Engine::take_finished() {
  std::vector<Completion> out = std::move(finished_);
  finished_.clear();
  std::sort(out.begin(), out.end(), [](const Completion& a, const Completion& b) { return a.id < b.id; });
  return out;
}

bool Engine::cancel(int64_t id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if ((*it)->id != id) continue;
    waiting_.erase(it);  // a waiting (or preempted) sequence holds no cache pages
    return true;
  }
  for (size_t i = 0; i < active_.size(); ++i) {
    Sequence& s = *active_[i];
    if (s.id != id) continue;
    cache_.close_sequence(s.main_seq);
    if (s.mtp_seq >= 0) mtp_cache_->close_sequence(s.mtp_seq);
    active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
    return true;
  }
  for (auto it = finished_.begin(); it != finished_.end(); ++it) {
    if (it->id != id) continue;
    finished_.erase(it);
    return true;
  }
  return false;
}

std::vector<Completion> Engine::run() {
  while (step()) {
  }
  return take_finished();
}

}  // namespace frugal::infer
