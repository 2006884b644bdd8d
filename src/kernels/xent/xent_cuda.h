// Fused softmax cross-entropy on the GPU (same rules as xent.h), one pass over the logits:
//   losses[n] = logsumexp(logits[n,:]) - logits[n, target]  (0 for target < 0)
//   dlogits[n,:] = (softmax - onehot) * scale                (0 rows for ignored targets)
// dlogits may alias logits (written in place after the row's statistics are known). The batch
// loss is summed on the device in a fixed order into loss_sum[0] (double) and the valid count
// into valid_count[0], so the step needs no host sync to form the loss. `scale` is read from the
// device (d total loss / d loss[n], e.g. weight / valid count, known only on the device).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frugal::cuda {

// losses [n] fp32, loss_sum [1] double, valid_count [1] int64 (all written, not accumulated).
template <class T>
void xent_fwd(float* losses, double* loss_sum, int64_t* valid_count, const T* logits,
              const int32_t* targets, int64_t n, int64_t vocab, cudaStream_t stream);
// dlogits [n, vocab] = (softmax(logits) - onehot) * (*scale)
template <class T>
void xent_bwd(T* dlogits, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
              const float* scale, cudaStream_t stream);

}  // namespace frugal::cuda
