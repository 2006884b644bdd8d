// SwiGLU feed-forward block (spec §1.1):  y[rows, hidden] = down(silu(gate(x)) * up(x)),
// gate/up: [hidden] -> [intermediate], down: [intermediate] -> [hidden], no biases.
// Used for the dense FFN ("model.layers.0.mlp", intermediate_size), every routed expert
// ("model.layers.3.mlp.experts.5", moe_intermediate_size) and the shared experts
// ("model.layers.3.mlp.shared_experts", moe_intermediate_size * n_shared_experts, as HF does).
//
// Accumulation rule: the three weight gradients accumulate (+=); dx is assigned.
// backward_input keeps what backward_weight needs (the Linear contexts hold x, h and the
// upstream gradients), so the weight half can be deferred; backward_weight releases it all.
#pragma once

#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/swiglu/swiglu.h"
#include "model/linear.h"

namespace frugal {

template <class T>
class MLP {
 public:
  struct Ctx {
    typename Linear<T>::Ctx gate, up, down;
    std::vector<T> g;  // [rows, intermediate] gate_proj output
    std::vector<T> u;  // [rows, intermediate] up_proj output
    int64_t rows = 0;
  };

  MLP() = default;
  // Registers prefix + ".gate_proj.weight" [intermediate, hidden], ".up_proj.weight"
  // [intermediate, hidden] and ".down_proj.weight" [hidden, intermediate], in that order.
  MLP(ParamStore<T>& store, const std::string& prefix, int64_t hidden, int64_t intermediate)
      : hidden_(hidden),
        intermediate_(intermediate),
        gate_proj_(store, prefix + ".gate_proj", hidden, intermediate),
        up_proj_(store, prefix + ".up_proj", hidden, intermediate),
        down_proj_(store, prefix + ".down_proj", intermediate, hidden) {}

  // x [rows, hidden] -> y [rows, hidden]
  void forward(Ctx& ctx, const T* x, T* y, int64_t rows) const {
    ctx.rows = rows;
    ctx.g.resize(rows * intermediate_);
    ctx.u.resize(rows * intermediate_);
    gate_proj_.forward(ctx.gate, x, ctx.g.data(), rows);  // [rows, intermediate]
    up_proj_.forward(ctx.up, x, ctx.u.data(), rows);      // [rows, intermediate]
    std::vector<T> h(rows * intermediate_);
    cpu::swiglu_fwd(h.data(), ctx.g.data(), ctx.u.data(), rows * intermediate_);
    down_proj_.forward(ctx.down, h.data(), y, rows);  // [rows, hidden]
  }

  // dy [rows, hidden] -> dx [rows, hidden] (assigned). Touches no parameter gradient.
  void backward_input(Ctx& ctx, const T* dy, T* dx) const {
    const int64_t n = ctx.rows * intermediate_;
    std::vector<T> dh(n), dg(n), du(n);
    down_proj_.backward_input(ctx.down, dy, dh.data());  // [rows, intermediate]
    cpu::swiglu_bwd(dg.data(), du.data(), dh.data(), ctx.g.data(), ctx.u.data(), n);
    gate_proj_.backward_input(ctx.gate, dg.data(), dx);  // [rows, hidden]
    std::vector<T> dx_up(ctx.rows * hidden_);
    up_proj_.backward_input(ctx.up, du.data(), dx_up.data());
    for (int64_t i = 0; i < ctx.rows * hidden_; ++i) dx[i] += dx_up[i];
  }

  // gate/up/down weight gradients += ...; then releases the context.
  void backward_weight(Ctx& ctx) const {
    gate_proj_.backward_weight(ctx.gate);
    up_proj_.backward_weight(ctx.up);
    down_proj_.backward_weight(ctx.down);
    ctx = Ctx{};
  }

  int64_t hidden() const { return hidden_; }
  int64_t intermediate() const { return intermediate_; }
  const Linear<T>& gate_proj() const { return gate_proj_; }
  const Linear<T>& up_proj() const { return up_proj_; }
  const Linear<T>& down_proj() const { return down_proj_; }

 private:
  int64_t hidden_ = 0, intermediate_ = 0;
  Linear<T> gate_proj_, up_proj_, down_proj_;
};

}  // namespace frugal
