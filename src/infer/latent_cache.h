// Paged latent KV cache of absorbed MLA (spec §1.5): per token and layer one entry of
// kv_lora_rank + qk_rope_head_dim floats, [RMSNorm'd c_KV ; RoPE'd k_pe].
//
// Storage is a pool of fixed-size pages, allocated once: page p holds page_size consecutive
// positions of one sequence for every layer, laid out [page][layer][slot][entry]. Each sequence
// has a page table (its pages in position order) and a length; pages come from and return to a
// free list, so sequences of any lengths share the pool without fragmentation:
//   grow(seq, n)      make positions [0, n) valid, taking the pages needed (all or nothing)
//   truncate(seq, n)  roll back to n positions (rejected speculative tokens), freeing pages
//                     wholly past n
//   close_sequence    every page back to the free list
// Entries are written by the model after grow() and read by attention for positions < length.
//
// The host pool is the CPU model's storage. A model that keeps the entries elsewhere (the GPU
// model: device BF16 in the same [page][layer][slot][entry] layout) builds the cache with
// host_storage = false and attaches its storage, which lives as long as the cache; the page
// bookkeeping is the same either way.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace frugal::infer {

class PagedLatentCache {
 public:
  PagedLatentCache(int64_t layers, int64_t entry_dim, int64_t page_size, int64_t num_pages,
                   bool host_storage = true);

  int64_t open_sequence();               // a new empty sequence; ids of closed ones are reused
  void close_sequence(int64_t seq);
  bool grow(int64_t seq, int64_t length);      // false (nothing changed) when pages run out
  void truncate(int64_t seq, int64_t length);  // length <= current length

  int64_t length(int64_t seq) const { return state(seq).length; }
  const std::vector<int32_t>& page_table(int64_t seq) const { return state(seq).pages; }
  // Storage kept elsewhere by the model that made this cache (null unless attached).
  void attach_storage(std::shared_ptr<void> storage) { storage_ = std::move(storage); }
  void* storage() const { return storage_.get(); }
  bool host_storage() const { return !pool_.empty(); }

  // [entry_dim] of (layer, position); position < length(seq). Host storage only.
  float* entry(int64_t seq, int64_t layer, int64_t position);
  const float* entry(int64_t seq, int64_t layer, int64_t position) const;
  // The first of page_size consecutive entries (stride entry_dim) of page `page_index` of seq.
  const float* page_entries(int64_t seq, int64_t layer, int64_t page_index) const;

  int64_t pages_for(int64_t length) const { return (length + page_size_ - 1) / page_size_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  int64_t total_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t layers() const { return layers_; }
  int64_t entry_dim() const { return entry_dim_; }
  int64_t open_sequences() const;

 private:
  struct Sequence {
    bool open = false;
    int64_t length = 0;
    std::vector<int32_t> pages;
  };
  const Sequence& state(int64_t seq) const;
  Sequence& state(int64_t seq);

  int64_t layers_, entry_dim_, page_size_, num_pages_;
  std::vector<float> pool_;       // [num_pages, layers, page_size, entry_dim] or empty
  std::shared_ptr<void> storage_;  // the model's own storage when pool_ is empty
  std::vector<int32_t> free_;     // free pages; the next taken is free_.back()
  std::vector<Sequence> sequences_;
  std::vector<int64_t> closed_ids_;
};

}  // namespace frugal::infer
