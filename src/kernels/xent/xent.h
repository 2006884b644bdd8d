// Softmax cross-entropy over the vocabulary, one row per token.
//   loss[n] = logsumexp(logits[n,:]) - logits[n, target[n]]   (0 where target < 0: ignored)
// Backward: dlogits[n,:] = (softmax(logits[n,:]) - onehot(target[n])) * scale  (assigned; rows
// with an ignored target get 0). `scale` is d(total loss)/d(loss[n]), e.g. 1/valid_count.
#pragma once

#include <cstdint>

namespace frugal::cpu {

// Returns the sum of the per-token losses over valid targets; writes the count of valid targets.
template <class T>
double xent_fwd(T* losses, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
                int64_t* valid_count);
template <class T>
void xent_bwd(T* dlogits, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
              double scale);

}  // namespace frugal::cpu
