// Linear layer without bias (DeepSeek has none):  y[rows, out] = x[rows, in] · W[out, in]^T.
//
// Accumulation rule (every module file states it):
//   parameter gradients accumulate (W.grad +=), activation gradients assign (dx =).
// backward_input keeps dy in the context so that backward_weight can run later (DualPipe and
// zero-bubble schedules defer it); backward_weight then releases the saved tensors.
#pragma once

#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/gemm/gemm.h"

namespace frugal {

template <class T>
class Linear {
 public:
  struct Ctx {
    std::vector<T> x;   // [rows, in] saved input
    std::vector<T> dy;  // [rows, out] saved by backward_input for backward_weight
    int64_t rows = 0;
  };

  Linear() = default;
  // Registers "<name>.weight" of shape [out, in].
  Linear(ParamStore<T>& store, const std::string& name, int64_t in, int64_t out)
      : in_(in), out_(out), weight_(&store.add(name + ".weight", {out, in}, ParamKind::Matrix)) {}

  void forward(Ctx& ctx, const T* x, T* y, int64_t rows) const {
    ctx.rows = rows;
    ctx.x.assign(x, x + rows * in_);
    cpu::matmul_nt(y, x, weight_->data(), rows, out_, in_, false);  // [rows, out]
  }
  void backward_input(Ctx& ctx, const T* dy, T* dx) const {
    ctx.dy.assign(dy, dy + ctx.rows * out_);
    cpu::matmul_nn(dx, dy, weight_->data(), ctx.rows, in_, out_, false);  // [rows, in]
  }
  void backward_weight(Ctx& ctx) const {
    if (weight_->trainable)
      cpu::matmul_tn(weight_->grad_data(), ctx.dy.data(), ctx.x.data(), out_, in_, ctx.rows, true);
    ctx = Ctx{};
  }

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  Param<T>& weight() const { return *weight_; }

 private:
  int64_t in_ = 0, out_ = 0;
  Param<T>* weight_ = nullptr;
};

}  // namespace frugal
