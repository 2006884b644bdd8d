// Bounded pre-token cache of one encoding thread: pre-token bytes -> BPE ids.
//
// Open addressing (linear probing, power-of-two table at most half full) over a key arena and an
// id pool, so a lookup is one hash, one or two probes and a memcmp; nothing is allocated per entry.
// When `capacity` entries are stored (or the arenas outgrow their bound) the cache is cleared:
// simple, and on natural text the frequent pre-tokens are back within a few kilobytes.
#pragma once

#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace frugal::tok {

class PreTokenCache {
 public:
  // Clears the cache and sets its capacity (entries); 0 disables it.
  void reset(size_t capacity) {
    capacity_ = capacity;
    size_t table = 16;
    while (table < capacity * 2) table *= 2;
    slots_.assign(capacity ? table : 0, Slot{});
    mask_ = slots_.empty() ? 0 : slots_.size() - 1;
    count_ = 0;
    keys_.clear();
    ids_.clear();
  }
  size_t capacity() const { return capacity_; }

  static uint64_t hash(std::string_view key) {
    const uint64_t h = XXH3_64bits(key.data(), key.size());
    return h == 0 ? 1 : h;
  }

  // Appends the cached ids of `key` to out and returns true, or returns false.
  bool lookup(std::string_view key, uint64_t h, std::vector<int32_t>& out) const {
    if (slots_.empty()) return false;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return false;
      if (s.hash == h && s.key_size == key.size() &&
          std::memcmp(keys_.data() + s.key_offset, key.data(), key.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_offset, ids_.begin() + s.ids_offset + s.ids_count);
        return true;
      }
    }
  }

  void insert(std::string_view key, uint64_t h, const int32_t* ids, size_t count) {
    if (slots_.empty()) return;
    if (count_ >= capacity_ || keys_.size() + key.size() > capacity_ * 64 ||
        ids_.size() + count > capacity_ * 32)
      reset(capacity_);
    size_t i = h & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()),
                     static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)};
    keys_.append(key);
    ids_.insert(ids_.end(), ids, ids + count);
    ++count_;
  }

 private:
  struct Slot {
    uint64_t hash = 0;  // 0: empty
    uint32_t key_offset = 0, key_size = 0;
    uint32_t ids_offset = 0, ids_count = 0;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0, capacity_ = 0;
  std::string keys_;
  std::vector<int32_t> ids_;
};

}  // namespace frugal::tok
