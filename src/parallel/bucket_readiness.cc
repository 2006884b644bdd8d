// BucketReadiness (see bucket_readiness.h): per-bucket counts of pending parameters, decremented
// as parameters become final; a bucket is reported when its count reaches zero.
#include "parallel/bucket_readiness.h"

#include <algorithm>

#include "core/error.h"

namespace frugal {

BucketReadiness::BucketReadiness(int64_t params,
                                 const std::vector<std::vector<int64_t>>& bucket_params) {
  FRUGAL_CHECK(params >= 0, "BucketReadiness: {} parameters", params);
  param_buckets_.resize(static_cast<size_t>(params));
  needs_.assign(bucket_params.size(), 0);
  for (size_t k = 0; k < bucket_params.size(); ++k) {
    std::vector<int64_t> members = bucket_params[k];
    std::sort(members.begin(), members.end());
    members.erase(std::unique(members.begin(), members.end()), members.end());
    for (int64_t p : members) {
      FRUGAL_CHECK(p >= 0 && p < params,
                   "BucketReadiness: bucket {} names parameter {}, outside [0, {})", k, p, params);
      param_buckets_[static_cast<size_t>(p)].push_back(static_cast<int64_t>(k));
    }
    needs_[k] = static_cast<int64_t>(members.size());
  }
  reset();
}

void BucketReadiness::reset() {
  waiting_ = needs_;
  final_.assign(param_buckets_.size(), 0);
  reported_.assign(needs_.size(), 0);
  reported_count_ = 0;
  started_ = false;
}

bool BucketReadiness::is_final(int64_t param) const {
  FRUGAL_CHECK(param >= 0 && param < params(), "BucketReadiness: parameter {} outside [0, {})",
               param, params());
  return final_[static_cast<size_t>(param)] != 0;
}

bool BucketReadiness::is_reported(int64_t bucket) const {
  FRUGAL_CHECK(bucket >= 0 && bucket < buckets(), "BucketReadiness: bucket {} outside [0, {})",
               bucket, buckets());
  return reported_[static_cast<size_t>(bucket)] != 0;
}

std::vector<int64_t> BucketReadiness::mark_final(std::span<const int64_t> final_params) {
  // Every check before any change: an error leaves the cycle as it was.
  std::vector<int64_t> sorted(final_params.begin(), final_params.end());
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int64_t p = sorted[i];
    FRUGAL_CHECK(p >= 0 && p < params(),
                 "BucketReadiness: parameter {} is unknown (the buckets cover parameters [0, {}))",
                 p, params());
    FRUGAL_CHECK(i == 0 || sorted[i - 1] != p,
                 "BucketReadiness: parameter {} is named twice in one notification", p);
    FRUGAL_CHECK(final_[static_cast<size_t>(p)] == 0,
                 "BucketReadiness: parameter {} was already final in this step (repeated "
                 "notification)",
                 p);
  }
  return mark_checked(final_params);
}

std::vector<int64_t> BucketReadiness::mark_rest_final() {
  std::vector<int64_t> rest;
  for (int64_t p = 0; p < params(); ++p)
    if (final_[static_cast<size_t>(p)] == 0) rest.push_back(p);
  return mark_checked(rest);
}

std::vector<int64_t> BucketReadiness::take_pending() {
  started_ = true;
  std::vector<int64_t> out;
  for (int64_t k = 0; k < buckets(); ++k)
    if (reported_[static_cast<size_t>(k)] == 0) {
      reported_[static_cast<size_t>(k)] = 1;
      ++reported_count_;
      out.push_back(k);
    }
  return out;
}

std::vector<int64_t> BucketReadiness::mark_checked(std::span<const int64_t> final_params) {
  std::vector<int64_t> ready;
  if (!started_) {
    started_ = true;
    for (int64_t k = 0; k < buckets(); ++k)
      if (needs_[static_cast<size_t>(k)] == 0) ready.push_back(k);
  }
  for (int64_t p : final_params) {
    final_[static_cast<size_t>(p)] = 1;
    for (int64_t k : param_buckets_[static_cast<size_t>(p)])
      if (--waiting_[static_cast<size_t>(k)] == 0) ready.push_back(k);
  }
  std::sort(ready.begin(), ready.end());
  // A bucket reported by take_pending already (its parameters finishing after the step launched
  // it) is not reported again.
  std::erase_if(ready, [this](int64_t k) { return reported_[static_cast<size_t>(k)] != 0; });
  for (int64_t k : ready) reported_[static_cast<size_t>(k)] = 1;
  reported_count_ += static_cast<int64_t>(ready.size());
  return ready;
}

}  // namespace frugal
