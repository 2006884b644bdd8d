// AdamW with decoupled weight decay over a ParamStore (spec §6.2: beta1 0.9, beta2 0.95,
// weight_decay 0.1, global-norm clipping at 1.0).
//
// For every trainable parameter p with gradient g, at optimizer step t (1-based):
//   g     = clip_scale * g                         (clip_scale = min(1, grad_clip / ||G||_2))
//   m     = beta1 * m + (1 - beta1) * g
//   v     = beta2 * v + (1 - beta2) * g^2
//   m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
//   p     = p - lr * weight_decay * p              (decoupled: only when p.weight_decay is true)
//   p     = p - lr * m_hat / (sqrt(v_hat) + eps)
// Weight decay applies only to parameters flagged weight_decay (the matrices, ParamKind::Matrix).
// Norm weights (ParamKind::Norm) get the Adam update without decay; buffers (ParamKind::Buffer,
// e.g. e_score_correction_bias, which the balancing rule of spec §2.2 updates) are not touched.
//
// Moments are kept in T (fp32 in training) per trainable parameter, in the store's creation order.
// Spec §4.3 keeps them in BF16 on the GPU; this CPU reference keeps full precision.
// The element-wise update runs in double and rounds once to T, so it is identical on any number of
// threads. The global norm ||G||_2 is accumulated in double over fixed-size chunks summed in a fixed
// order, so it is deterministic too. A step whose norm is not finite (NaN/Inf gradient) changes
// nothing (moments, parameters and the step count stay) and reports skipped = true.
//
// Checkpoints: state() lists (name, m, v) for every trainable parameter, step_count() the number of
// applied updates; set_state()/set_step_count() put them back. An exact restore makes the next
// update bitwise identical to an uninterrupted run.
#pragma once

#include <cmath>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/param.h"
#include "train/train_config.h"

namespace frugal {

// The AdamW settings the CPU and GPU optimizers accept; an error names the bad key.
void check_optim_config(const OptimConfig& config);

// L2 norm of all trainable gradients, accumulated in double in a deterministic order: each
// parameter's gradient is cut into chunks of kGradNormChunk elements (from its first element),
// each chunk's sum of squares is accumulated in order (grad_sum_of_squares), and the chunk sums
// are added in store order. ZeRO-1 (train/zero1.h) computes the same chunks on their owners and
// adds them in the same order, so its norm is bitwise the same.
template <class T>
double global_grad_norm(const ParamStore<T>& store);

inline constexpr int64_t kGradNormChunk = int64_t{1} << 16;

// sum_i x[i]^2 in double, i ascending.
template <class T>
double grad_sum_of_squares(const T* x, int64_t n);

// Global-norm clipping for a gradient norm: the factor applied to the gradients (1 when not
// clipped, grad_clip / grad_norm when above grad_clip > 0) or, for a norm that is not finite, a
// skipped step (factor 0). Shared by AdamW, ZeRO-1 and the pipeline optimizer.
struct ClipDecision {
  double clip_scale = 1;
  bool skip = false;
};
inline ClipDecision clip_for_norm(double grad_norm, double grad_clip) {
  if (!std::isfinite(grad_norm)) return {0.0, true};
  if (grad_clip > 0.0 && grad_norm > grad_clip) return {grad_clip / grad_norm, false};
  return {};
}

// The scalars of one AdamW update (optimizer step `step_count`, 1-based).
struct AdamWScalars {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  double clip_scale = 1;
  double bias_correction1 = 1, bias_correction2 = 1;  // 1 - beta^step_count
};
AdamWScalars adamw_scalars(const OptimConfig& config, double lr, double clip_scale,
                           int64_t step_count);

// The element-wise update of the rule above on n elements (value, m, v updated in place), with
// decay when `decay` (the parameter's weight_decay flag). Runs in double, rounds once to T; the
// result does not depend on the thread count. Shared by AdamW::step and ZeRO-1's shards.
template <class T>
void adamw_update(T* value, const T* grad, T* m, T* v, int64_t n, bool decay,
                  const AdamWScalars& s);

template <class T>
class AdamW {
 public:
  struct StepInfo {
    double grad_norm = 0;   // global L2 norm of the gradients before clipping
    double clip_scale = 1;  // factor applied to the gradients (1 when not clipped, 0 when skipped)
    bool skipped = false;   // true when grad_norm was not finite: nothing was updated
  };
  struct ParamState {
    std::string name;       // Hugging Face parameter name
    std::vector<T> m;       // first moment, same size as the parameter
    std::vector<T> v;       // second moment
  };

  // Zero moments for every trainable parameter of `store` (the store's layout is fixed from here).
  AdamW(const OptimConfig& config, const ParamStore<T>& store);

  // One update at learning rate `lr`; gradients are read, not cleared (call zero_grad after).
  StepInfo step(ParamStore<T>& store, double lr);

  const OptimConfig& config() const { return config_; }
  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t steps);

  // Optimizer state for checkpoints, one entry per trainable parameter in store order.
  const std::vector<ParamState>& state() const { return states_; }
  // Replace the moments of parameter `name`; throws when the name is unknown or a size differs.
  void set_state(const std::string& name, const std::vector<T>& m, const std::vector<T>& v);

 private:
  OptimConfig config_;
  int64_t step_count_ = 0;
  std::vector<ParamState> states_;
  std::unordered_map<std::string, size_t> index_;
};

// Every moment of `to` from the tensor of the same name in one of `from` (an error names a tensor
// none of them holds), and the update count of the first: moves moments between host optimizers
// over different subsets of one model (a rank's tensors, a ZeRO-1 part, the whole model).
void copy_moments_by_name(AdamW<float>& to, std::initializer_list<const AdamW<float>*> from);

}  // namespace frugal
