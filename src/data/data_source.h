// The interface every training-data source implements: the plain text source (text_source.h) now,
// the token-shard loader with packing and FIM later.
//
// next_batch fills two [batch, seq] row-major arrays: tokens[b, t] is the model input and
// targets[b, t] is the token that follows tokens[b, t] in the data (the next-token label).
// state() captures everything needed to continue the exact same stream of batches; restore() on a
// source built from the same data and settings makes the following batches identical to the ones
// an uninterrupted run would have produced. Both throw frugal::Error on inconsistent input.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace frugal {

class DataSource {
 public:
  virtual ~DataSource() = default;

  // tokens, targets: [batch, seq] each.
  virtual void next_batch(int32_t* tokens, int32_t* targets, int64_t batch, int64_t seq) = 0;
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
  // Every id this source produces is < vocab_size().
  virtual int64_t vocab_size() const = 0;
};

}  // namespace frugal
