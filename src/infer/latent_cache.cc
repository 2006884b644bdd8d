// Paged latent KV cache (see latent_cache.h).
#include "infer/latent_cache.h"

#include "core/error.h"

namespace frugal::infer {

PagedLatentCache::PagedLatentCache(int64_t layers, int64_t entry_dim, int64_t page_size,
                                   int64_t num_pages, bool host_storage)
    : layers_(layers), entry_dim_(entry_dim), page_size_(page_size), num_pages_(num_pages) {
  FRUGAL_CHECK(layers > 0 && entry_dim > 0, "latent cache: {} layers of {} floats per entry",
               layers, entry_dim);
  FRUGAL_CHECK(page_size > 0, "latent cache: page size {} must be positive", page_size);
  FRUGAL_CHECK(num_pages > 0 && num_pages < (int64_t{1} << 31),
               "latent cache: page count {} must be in [1, 2^31)", num_pages);
  if (host_storage)
    pool_.assign(static_cast<size_t>(num_pages * layers * page_size * entry_dim), 0.0f);
  free_.reserve(static_cast<size_t>(num_pages));
  for (int64_t p = num_pages; p-- > 0;) free_.push_back(static_cast<int32_t>(p));  // page 0 first
}

const PagedLatentCache::Sequence& PagedLatentCache::state(int64_t seq) const {
  FRUGAL_CHECK(seq >= 0 && seq < static_cast<int64_t>(sequences_.size()) && sequences_[seq].open,
               "latent cache: no open sequence {}", seq);
  return sequences_[seq];
}

PagedLatentCache::Sequence& PagedLatentCache::state(int64_t seq) {
  return const_cast<Sequence&>(static_cast<const PagedLatentCache*>(this)->state(seq));
}

int64_t PagedLatentCache::open_sequence() {
  int64_t id;
  if (!closed_ids_.empty()) {
    id = closed_ids_.back();
    closed_ids_.pop_back();
  } else {
    id = static_cast<int64_t>(sequences_.size());
    sequences_.emplace_back();
  }
  sequences_[id] = Sequence{true, 0, {}};
  return id;
}

void PagedLatentCache::close_sequence(int64_t seq) {
  Sequence& s = state(seq);
  for (size_t i = s.pages.size(); i-- > 0;) free_.push_back(s.pages[i]);
  s = Sequence{};
  closed_ids_.push_back(seq);
}

bool PagedLatentCache::grow(int64_t seq, int64_t length) {
  Sequence& s = state(seq);
  FRUGAL_CHECK(length >= s.length, "latent cache: grow sequence {} from {} to {} positions", seq,
               s.length, length);
  const int64_t needed = pages_for(length) - static_cast<int64_t>(s.pages.size());
  if (needed > free_pages()) return false;
  for (int64_t i = 0; i < needed; ++i) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
  s.length = length;
  return true;
}

void PagedLatentCache::truncate(int64_t seq, int64_t length) {
  Sequence& s = state(seq);
  FRUGAL_CHECK(length >= 0 && length <= s.length,
               "latent cache: truncate sequence {} of {} positions to {}", seq, s.length, length);
  const size_t keep = static_cast<size_t>(pages_for(length));
  while (s.pages.size() > keep) {
    free_.push_back(s.pages.back());
    s.pages.pop_back();
  }
  s.length = length;
}

const float* PagedLatentCache::page_entries(int64_t seq, int64_t layer, int64_t page_index) const {
  const Sequence& s = state(seq);
  FRUGAL_CHECK(!pool_.empty(), "latent cache: the entries live in the model's own storage");
  FRUGAL_CHECK(layer >= 0 && layer < layers_ && page_index >= 0 &&
                   page_index < static_cast<int64_t>(s.pages.size()),
               "latent cache: sequence {} has no page {} of layer {}", seq, page_index, layer);
  const int64_t page = s.pages[page_index];
  return pool_.data() + ((page * layers_ + layer) * page_size_) * entry_dim_;
}

const float* PagedLatentCache::entry(int64_t seq, int64_t layer, int64_t position) const {
  FRUGAL_CHECK(position >= 0 && position < state(seq).length,
               "latent cache: position {} of sequence {} is not valid (length {})", position, seq,
               state(seq).length);
  return page_entries(seq, layer, position / page_size_) + (position % page_size_) * entry_dim_;
}

float* PagedLatentCache::entry(int64_t seq, int64_t layer, int64_t position) {
  return const_cast<float*>(static_cast<const PagedLatentCache*>(this)->entry(seq, layer, position));
}

int64_t PagedLatentCache::open_sequences() const {
  int64_t n = 0;
  for (const Sequence& s : sequences_) n += s.open;
  return n;
}

}  // namespace frugal::infer
