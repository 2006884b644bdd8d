// RMSNorm module: y = x * rstd * w over the last dimension (kernels/rmsnorm).
//
// Accumulation rule: w.grad accumulates (+=); dx is assigned.
// backward_input keeps dy for the deferred backward_weight.
#pragma once

#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal {

template <class T>
class RMSNorm {
 public:
  struct Ctx {
    std::vector<T> x;     // [rows, dim]
    std::vector<T> rstd;  // [rows]
    std::vector<T> dy;    // [rows, dim] saved by backward_input
    int64_t rows = 0;
  };

  RMSNorm() = default;
  // Registers "<name>.weight" [dim], initialised to 1.
  RMSNorm(ParamStore<T>& store, const std::string& name, int64_t dim, double eps)
      : dim_(dim), eps_(eps), weight_(&store.add(name + ".weight", {dim}, ParamKind::Norm)) {
    std::fill(weight_->value.begin(), weight_->value.end(), T(1));
  }

  void forward(Ctx& ctx, const T* x, T* y, int64_t rows) const {
    ctx.rows = rows;
    ctx.x.assign(x, x + rows * dim_);
    ctx.rstd.resize(rows);
    cpu::rmsnorm_fwd(y, ctx.rstd.data(), x, weight_->data(), rows, dim_, eps_);
  }
  void backward_input(Ctx& ctx, const T* dy, T* dx) const {
    ctx.dy.assign(dy, dy + ctx.rows * dim_);
    cpu::rmsnorm_bwd_input(dx, dy, ctx.x.data(), weight_->data(), ctx.rstd.data(), ctx.rows, dim_);
  }
  void backward_weight(Ctx& ctx) const {
    cpu::rmsnorm_bwd_weight(weight_->grad_data(), ctx.dy.data(), ctx.x.data(), ctx.rstd.data(),
                            ctx.rows, dim_);
    ctx = Ctx{};
  }

  int64_t dim() const { return dim_; }
  Param<T>& weight() const { return *weight_; }

 private:
  int64_t dim_ = 0;
  double eps_ = 1e-6;
  Param<T>* weight_ = nullptr;
};

}  // namespace frugal
