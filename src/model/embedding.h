// Token embedding module: out[n, hidden] = table[ids[n]]. Registers "<name>.weight" [vocab, hidden].
//
// Accumulation rule: table.grad accumulates (+=). There is no input gradient (ids are integers);
// backward_input only keeps dout for the deferred backward_weight.
#pragma once

#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/embedding/embedding.h"

namespace frugal {

template <class T>
class Embedding {
 public:
  struct Ctx {
    std::vector<int32_t> ids;  // [n]
    std::vector<T> dout;       // [n, hidden]
  };

  Embedding() = default;
  Embedding(ParamStore<T>& store, const std::string& name, int64_t vocab, int64_t hidden)
      : vocab_(vocab), hidden_(hidden),
        table_(&store.add(name + ".weight", {vocab, hidden}, ParamKind::Matrix)) {}

  void forward(Ctx& ctx, const int32_t* ids, T* out, int64_t n) const {
    for (int64_t i = 0; i < n; ++i)
      FRUGAL_CHECK(ids[i] >= 0 && ids[i] < vocab_, "token id {} outside the vocabulary [0, {})",
                   ids[i], vocab_);
    ctx.ids.assign(ids, ids + n);
    cpu::embedding_fwd(out, table_->data(), ids, n, hidden_);
  }
  void backward_input(Ctx& ctx, const T* dout) const {
    ctx.dout.assign(dout, dout + ctx.ids.size() * hidden_);
  }
  void backward_weight(Ctx& ctx) const {
    cpu::embedding_bwd_weight(table_->grad_data(), ctx.dout.data(), ctx.ids.data(),
                              static_cast<int64_t>(ctx.ids.size()), hidden_);
    ctx = Ctx{};
  }

  Param<T>& table() const { return *table_; }

 private:
  int64_t vocab_ = 0, hidden_ = 0;
  Param<T>* table_ = nullptr;
};

}  // namespace frugal
