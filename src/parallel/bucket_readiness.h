// Which gradient buckets are ready to be reduced, as the backward finishes parameters' gradients
// (spec §5.1: "gradients reduce-scattered in buckets as backward produces them"). Host-only
// bookkeeping, every build; GpuZero1Optimizer (gpu_zero1.h) drives it.
//
// Parameters are numbered [0, params); bucket k needs the gradients of the parameters
// bucket_params[k] (a parameter may feed several buckets, some parameters none). A cycle (one
// optimizer step) starts with every parameter pending:
//   mark_final(ps)      the gradients of ps are final: returns the buckets whose last pending
//                       parameter was among them, in ascending bucket order. A bucket with no
//                       parameters becomes ready with the first call of the cycle.
//   mark_rest_final()   every parameter still pending is final (the end of the backward).
//   take_pending()      the buckets not yet reported, ascending, now reported too (the optimizer
//                       step reduces whatever the backward did not).
//   reset()             a new cycle.
// Every bucket is reported exactly once per cycle, and the order depends only on the calls, so
// every data-parallel rank making the same calls launches the same collectives in the same order.
// Errors (frugal::Error, state unchanged): a parameter outside [0, params), one already final in
// this cycle, or one named twice in a call.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace frugal {

class BucketReadiness {
 public:
  BucketReadiness() = default;
  // Throws when a bucket names a parameter outside [0, params). Repeats inside a bucket count once.
  BucketReadiness(int64_t params, const std::vector<std::vector<int64_t>>& bucket_params);

  std::vector<int64_t> mark_final(std::span<const int64_t> final_params);
  std::vector<int64_t> mark_rest_final();
  std::vector<int64_t> take_pending();
  void reset();

  int64_t params() const { return static_cast<int64_t>(final_.size()); }
  int64_t buckets() const { return static_cast<int64_t>(waiting_.size()); }
  bool is_final(int64_t param) const;
  bool is_reported(int64_t bucket) const;
  int64_t reported() const { return reported_count_; }
  // Whether any call of this cycle was made (mark_final, mark_rest_final or take_pending).
  bool started() const { return started_; }

 private:
  std::vector<int64_t> mark_checked(std::span<const int64_t> final_params);

  std::vector<std::vector<int64_t>> param_buckets_;  // per parameter: the buckets it feeds
  std::vector<int64_t> needs_;                       // per bucket: its distinct parameter count
  std::vector<int64_t> waiting_;                     // per bucket: pending parameters this cycle
  std::vector<char> final_;                          // per parameter, this cycle
  std::vector<char> reported_;                       // per bucket, this cycle
  int64_t reported_count_ = 0;
  bool started_ = false;
};

}  // namespace frugal
