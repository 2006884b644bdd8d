// Named parameters of a model: value, gradient and flags, stored under Hugging Face tensor names.
//
// A ParamStore owns every parameter of a model in creation order; modules keep Param pointers
// (stable: each Param is heap-allocated once). Parameter gradients accumulate (+=) across
// micro-batches until zero_grad().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace frugal {

template <class T>
struct Param {
  std::string name;             // Hugging Face name, e.g. "model.layers.0.self_attn.q_a_proj.weight"
  std::vector<int64_t> shape;   // e.g. {out_features, in_features}
  std::vector<T> value;
  std::vector<T> grad;          // same size as value; empty when not trainable
  bool trainable = true;        // false for buffers such as e_score_correction_bias
  bool weight_decay = true;     // false for norms, biases and buffers

  int64_t numel() const { return static_cast<int64_t>(value.size()); }
  T* data() { return value.data(); }
  const T* data() const { return value.data(); }
  T* grad_data() { return grad.data(); }
};

enum class ParamKind { Matrix, Norm, Buffer };

template <class T>
class ParamStore {
 public:
  // Matrix: trainable, decayed. Norm: trainable, not decayed. Buffer: not trainable.
  Param<T>& add(const std::string& name, std::vector<int64_t> shape, ParamKind kind) {
    FRUGAL_CHECK(!index_.count(name), "duplicate parameter name {}", name);
    auto p = std::make_unique<Param<T>>();
    p->name = name;
    p->shape = std::move(shape);
    int64_t n = 1;
    for (int64_t d : p->shape) n *= d;
    p->value.assign(static_cast<size_t>(n), T(0));
    p->trainable = kind != ParamKind::Buffer;
    p->weight_decay = kind == ParamKind::Matrix;
    if (p->trainable) p->grad.assign(static_cast<size_t>(n), T(0));
    index_[name] = params_.size();
    params_.push_back(std::move(p));
    return *params_.back();
  }

  Param<T>* find(const std::string& name) {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : params_[it->second].get();
  }
  Param<T>& get(const std::string& name) {
    Param<T>* p = find(name);
    FRUGAL_CHECK(p != nullptr, "no parameter named {}", name);
    return *p;
  }
  const Param<T>& get(const std::string& name) const {
    return const_cast<ParamStore*>(this)->get(name);
  }

  void zero_grad() {
    for (auto& p : params_) std::fill(p->grad.begin(), p->grad.end(), T(0));
  }

  const std::vector<std::unique_ptr<Param<T>>>& all() const { return params_; }
  size_t size() const { return params_.size(); }
  int64_t numel() const {
    int64_t n = 0;
    for (auto& p : params_) n += p->numel();
    return n;
  }

 private:
  std::vector<std::unique_ptr<Param<T>>> params_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace frugal
