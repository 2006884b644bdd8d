// AdamW reference implementation (see adamw.h for the update rule and the determinism contract).
#include "train/adamw.h"

#include <algorithm>
#include <cmath>

namespace frugal {

template <class T>
double grad_sum_of_squares(const T* x, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(x[i]);
    sum += g * g;
  }
  return sum;
}

AdamWScalars adamw_scalars(const OptimConfig& config, double lr, double clip_scale,
                           int64_t step_count) {
  AdamWScalars s;
  s.lr = lr;
  s.beta1 = config.beta1;
  s.beta2 = config.beta2;
  s.eps = config.eps;
  s.weight_decay = config.weight_decay;
  s.clip_scale = clip_scale;
  s.bias_correction1 = 1.0 - std::pow(config.beta1, static_cast<double>(step_count));
  s.bias_correction2 = 1.0 - std::pow(config.beta2, static_cast<double>(step_count));
  return s;
}

template <class T>
void adamw_update(T* value, const T* grad, T* m, T* v, int64_t n, bool decay_flag,
                  const AdamWScalars& s) {
  const double beta1 = s.beta1, beta2 = s.beta2, eps = s.eps, lr = s.lr;
  const double decay = decay_flag ? lr * s.weight_decay : 0.0;
  const double clip_scale = s.clip_scale;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grad[i]) * clip_scale;
    m[i] = static_cast<T>(beta1 * static_cast<double>(m[i]) + (1.0 - beta1) * g);
    v[i] = static_cast<T>(beta2 * static_cast<double>(v[i]) + (1.0 - beta2) * g * g);
    const double m_hat = static_cast<double>(m[i]) / s.bias_correction1;
    const double v_hat = static_cast<double>(v[i]) / s.bias_correction2;
    const double p = static_cast<double>(value[i]);
    value[i] = static_cast<T>(p - decay * p - lr * m_hat / (std::sqrt(v_hat) + eps));
  }
}

template <class T>
double global_grad_norm(const ParamStore<T>& store) {
  struct NormChunk {
    const T* grad;
    int64_t begin, end;
  };
  std::vector<NormChunk> chunks;
  for (const auto& param : store.all()) {
    if (!param->trainable) continue;
    int64_t n = static_cast<int64_t>(param->grad.size());
    for (int64_t begin = 0; begin < n; begin += kGradNormChunk)
      chunks.push_back({param->grad.data(), begin, std::min(n, begin + kGradNormChunk)});
  }
  std::vector<double> partial(chunks.size(), 0.0);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < num_chunks; ++c)
    partial[c] = grad_sum_of_squares(chunks[c].grad + chunks[c].begin,
                                     chunks[c].end - chunks[c].begin);
  double total = 0.0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

void check_optim_config(const OptimConfig& config) {
  FRUGAL_CHECK(config.beta1 >= 0.0 && config.beta1 < 1.0, "optim.beta1 = {} must be in [0, 1)",
               config.beta1);
  FRUGAL_CHECK(config.beta2 >= 0.0 && config.beta2 < 1.0, "optim.beta2 = {} must be in [0, 1)",
               config.beta2);
  FRUGAL_CHECK(config.eps > 0.0, "optim.eps = {} must be > 0", config.eps);
  FRUGAL_CHECK(config.weight_decay >= 0.0, "optim.weight_decay = {} must be >= 0",
               config.weight_decay);
  FRUGAL_CHECK(config.grad_clip >= 0.0, "optim.grad_clip = {} must be >= 0 (0 disables clipping)",
               config.grad_clip);
}

template <class T>
AdamW<T>::AdamW(const OptimConfig& config, const ParamStore<T>& store) : config_(config) {
  check_optim_config(config);
  for (const auto& param : store.all()) {
    if (!param->trainable) continue;
    ParamState state;
    state.name = param->name;
    state.m.assign(param->value.size(), T(0));
    state.v.assign(param->value.size(), T(0));
    index_[state.name] = states_.size();
    states_.push_back(std::move(state));
  }
}

template <class T>
void AdamW<T>::set_step_count(int64_t steps) {
  FRUGAL_CHECK(steps >= 0, "optimizer step count {} must be >= 0", steps);
  step_count_ = steps;
}

template <class T>
void AdamW<T>::set_state(const std::string& name, const std::vector<T>& m, const std::vector<T>& v) {
  auto it = index_.find(name);
  FRUGAL_CHECK(it != index_.end(), "optimizer state for {}: no trainable parameter of that name",
               name);
  ParamState& state = states_[it->second];
  FRUGAL_CHECK(m.size() == state.m.size() && v.size() == state.v.size(),
               "optimizer state for {}: moments have {} and {} elements, the parameter has {}", name,
               m.size(), v.size(), state.m.size());
  state.m = m;
  state.v = v;
}

template <class T>
typename AdamW<T>::StepInfo AdamW<T>::step(ParamStore<T>& store, double lr) {
  // The store must still hold the parameters the optimizer was built for, in the same order.
  size_t k = 0;
  for (const auto& param : store.all()) {
    if (!param->trainable) continue;
    FRUGAL_CHECK(k < states_.size() && states_[k].name == param->name &&
                     states_[k].m.size() == param->value.size() &&
                     param->grad.size() == param->value.size(),
                 "AdamW: parameter {} does not match the optimizer state (layout changed?)",
                 param->name);
    ++k;
  }
  FRUGAL_CHECK(k == states_.size(), "AdamW: the store has {} trainable parameters, the optimizer {}",
               k, states_.size());
  FRUGAL_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: learning rate {} must be finite and >= 0",
               lr);

  StepInfo info;
  info.grad_norm = global_grad_norm(store);
  const ClipDecision clip = clip_for_norm(info.grad_norm, config_.grad_clip);
  info.clip_scale = clip.clip_scale;
  info.skipped = clip.skip;
  if (clip.skip) return info;

  ++step_count_;
  const AdamWScalars scalars = adamw_scalars(config_, lr, info.clip_scale, step_count_);
  k = 0;
  for (const auto& param : store.all()) {
    if (!param->trainable) continue;
    ParamState& state = states_[k++];
    adamw_update(param->value.data(), param->grad.data(), state.m.data(), state.v.data(),
                 param->numel(), param->weight_decay, scalars);
  }
  return info;
}

void copy_moments_by_name(AdamW<float>& to, std::initializer_list<const AdamW<float>*> from) {
  std::unordered_map<std::string, const AdamW<float>::ParamState*> source;
  for (const AdamW<float>* optimizer : from)
    for (const auto& state : optimizer->state()) source[state.name] = &state;
  for (const auto& state : to.state()) {
    const auto it = source.find(state.name);
    FRUGAL_CHECK(it != source.end(), "the optimizer state has no moments for {}", state.name);
    to.set_state(state.name, it->second->m, it->second->v);
  }
  to.set_step_count((*from.begin())->step_count());
}

template double grad_sum_of_squares<float>(const float*, int64_t);
template double grad_sum_of_squares<double>(const double*, int64_t);
template void adamw_update<float>(float*, const float*, float*, float*, int64_t, bool,
                                  const AdamWScalars&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, bool,
                                   const AdamWScalars&);
template double global_grad_norm<float>(const ParamStore<float>&);
template double global_grad_norm<double>(const ParamStore<double>&);
template class AdamW<float>;
template class AdamW<double>;

}  // namespace frugal
