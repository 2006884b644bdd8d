// MLA forward and backward (see mla.h for the computation and the accumulation rule).
#include "model/mla.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/attention/attention.h"

namespace frugal {

template <class T>
MLA<T>::MLA(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg)
    : cfg_(cfg),
      hidden_(cfg.hidden_size),
      heads_(cfg.num_attention_heads),
      q_lora_rank_(cfg.q_lora_rank),
      kv_lora_rank_(cfg.kv_lora_rank),
      nope_dim_(cfg.qk_nope_head_dim),
      rope_dim_(cfg.qk_rope_head_dim),
      v_dim_(cfg.v_head_dim),
      qk_dim_(cfg.qk_head_dim()),
      softmax_scale_(cfg.softmax_scale()) {
  FRUGAL_CHECK(hidden_ > 0, "model.hidden_size: must be > 0, got {}", hidden_);
  FRUGAL_CHECK(heads_ > 0, "model.num_attention_heads: must be > 0, got {}", heads_);
  FRUGAL_CHECK(q_lora_rank_ >= 0,
               "model.q_lora_rank: must be >= 0 (0 = no query compression), got {}", q_lora_rank_);
  FRUGAL_CHECK(kv_lora_rank_ > 0, "model.kv_lora_rank: must be > 0, got {}", kv_lora_rank_);
  FRUGAL_CHECK(nope_dim_ >= 0, "model.qk_nope_head_dim: must be >= 0, got {}", nope_dim_);
  FRUGAL_CHECK(rope_dim_ > 0 && rope_dim_ % 2 == 0,
               "model.qk_rope_head_dim: must be a positive even number, got {}", rope_dim_);
  FRUGAL_CHECK(v_dim_ > 0, "model.v_head_dim: must be > 0, got {}", v_dim_);
  rope_inv_freq(cfg_);  // rejects a bad rope_scaling now rather than at the first forward

  // Registration in Hugging Face's module order.
  if (q_lora_rank_ > 0) {
    q_a_proj_ = Linear<T>(store, prefix + ".q_a_proj", hidden_, q_lora_rank_);
    q_a_layernorm_ = RMSNorm<T>(store, prefix + ".q_a_layernorm", q_lora_rank_, kLatentNormEps);
    q_b_proj_ = Linear<T>(store, prefix + ".q_b_proj", q_lora_rank_, heads_ * qk_dim_);
  } else {
    q_proj_ = Linear<T>(store, prefix + ".q_proj", hidden_, heads_ * qk_dim_);
  }
  kv_a_proj_ = Linear<T>(store, prefix + ".kv_a_proj_with_mqa", hidden_, kv_lora_rank_ + rope_dim_);
  kv_a_layernorm_ = RMSNorm<T>(store, prefix + ".kv_a_layernorm", kv_lora_rank_, kLatentNormEps);
  kv_b_proj_ =
      Linear<T>(store, prefix + ".kv_b_proj", kv_lora_rank_, heads_ * (nope_dim_ + v_dim_));
  o_proj_ = Linear<T>(store, prefix + ".o_proj", heads_ * v_dim_, hidden_);
}

template <class T>
void MLA<T>::forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq) const {
  std::vector<int32_t> positions(static_cast<size_t>(batch * seq));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) positions[b * seq + t] = static_cast<int32_t>(t);
  forward(ctx, x, y, batch, seq, positions.data());
}

template <class T>
void MLA<T>::forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq,
                     const int32_t* positions) const {
  FRUGAL_CHECK(batch >= 0 && seq >= 0, "MLA::forward: bad batch {} / seq {}", batch, seq);
  const int64_t rows = batch * seq;
  ctx = Ctx{};
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.positions.assign(positions, positions + rows);
  int32_t max_position = -1;
  for (int32_t p : ctx.positions) {
    FRUGAL_CHECK(p >= 0, "MLA::forward: negative position {}", p);
    max_position = std::max(max_position, p);
  }
  ctx.rope = make_rope_table(cfg_, static_cast<int64_t>(max_position) + 1);

  // Query path.
  ctx.q.resize(static_cast<size_t>(rows * heads_ * qk_dim_));  // [rows, heads, qk_dim]
  if (q_lora_rank_ > 0) {
    std::vector<T> c_q(static_cast<size_t>(rows * q_lora_rank_));  // [rows, q_lora_rank]
    std::vector<T> c_q_normed(c_q.size());
    q_a_proj_.forward(ctx.q_a_proj, x, c_q.data(), rows);
    q_a_layernorm_.forward(ctx.q_a_layernorm, c_q.data(), c_q_normed.data(), rows);
    q_b_proj_.forward(ctx.q_b_proj, c_q_normed.data(), ctx.q.data(), rows);
  } else {
    q_proj_.forward(ctx.q_proj, x, ctx.q.data(), rows);
  }
  cpu::rope_fwd(ctx.q.data(), ctx.rope, ctx.positions.data(), rows, heads_, qk_dim_, nope_dim_);

  // KV path.
  const int64_t kv_a_dim = kv_lora_rank_ + rope_dim_;
  std::vector<T> kv_a(static_cast<size_t>(rows * kv_a_dim));  // [rows, kv_lora_rank + rope]
  kv_a_proj_.forward(ctx.kv_a_proj, x, kv_a.data(), rows);
  std::vector<T> c_kv(static_cast<size_t>(rows * kv_lora_rank_));  // [rows, kv_lora_rank]
  std::vector<T> k_pe(static_cast<size_t>(rows * rope_dim_));      // [rows, rope]
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = kv_a.data() + r * kv_a_dim;
    std::copy(src, src + kv_lora_rank_, c_kv.data() + r * kv_lora_rank_);
    std::copy(src + kv_lora_rank_, src + kv_a_dim, k_pe.data() + r * rope_dim_);
  }
  std::vector<T> c_kv_normed(c_kv.size());
  kv_a_layernorm_.forward(ctx.kv_a_layernorm, c_kv.data(), c_kv_normed.data(), rows);
  const int64_t kv_b_head = nope_dim_ + v_dim_;
  std::vector<T> kv_b(static_cast<size_t>(rows * heads_ * kv_b_head));  // [rows, heads, nope + v]
  kv_b_proj_.forward(ctx.kv_b_proj, c_kv_normed.data(), kv_b.data(), rows);
  cpu::rope_fwd(k_pe.data(), ctx.rope, ctx.positions.data(), rows, 1, rope_dim_, 0);

  // key_h = [k_nope_h ; k_pe] (k_pe broadcast over heads), v_h.
  ctx.k.resize(ctx.q.size());                                 // [rows, heads, qk_dim]
  ctx.v.resize(static_cast<size_t>(rows * heads_ * v_dim_));  // [rows, heads, v]
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads_; ++h) {
      const T* src = kv_b.data() + (r * heads_ + h) * kv_b_head;
      T* key = ctx.k.data() + (r * heads_ + h) * qk_dim_;
      std::copy(src, src + nope_dim_, key);
      std::copy(k_pe.data() + r * rope_dim_, k_pe.data() + (r + 1) * rope_dim_, key + nope_dim_);
      std::copy(src + nope_dim_, src + kv_b_head, ctx.v.data() + (r * heads_ + h) * v_dim_);
    }
  }

  // Attention, then the output projection.
  ctx.probs.resize(static_cast<size_t>(batch * heads_ * seq * seq));  // [batch, heads, seq, seq]
  std::vector<T> attn_out(ctx.v.size());                              // [rows, heads * v]
  cpu::attention_fwd(attn_out.data(), ctx.probs.data(), ctx.q.data(), ctx.k.data(), ctx.v.data(),
                     batch, seq, heads_, qk_dim_, v_dim_, softmax_scale_);
  o_proj_.forward(ctx.o_proj, attn_out.data(), y, rows);
}

template <class T>
void MLA<T>::backward_input(Ctx& ctx, const T* dy, T* dx) const {
  const int64_t rows = ctx.batch * ctx.seq;
  std::vector<T> d_attn_out(static_cast<size_t>(rows * heads_ * v_dim_));  // [rows, heads * v]
  o_proj_.backward_input(ctx.o_proj, dy, d_attn_out.data());

  std::vector<T> dq(ctx.q.size()), dk(ctx.k.size()), dv(ctx.v.size());
  cpu::attention_bwd(dq.data(), dk.data(), dv.data(), d_attn_out.data(), ctx.probs.data(),
                     ctx.q.data(), ctx.k.data(), ctx.v.data(), ctx.batch, ctx.seq, heads_, qk_dim_,
                     v_dim_, softmax_scale_);
  // The attention inputs are not needed by backward_weight.
  ctx.q = {};
  ctx.k = {};
  ctx.v = {};
  ctx.probs = {};

  // KV path: d kv_b per head = [dk_nope ; dv]; dk_pe = sum over heads of dk[:, h, nope:].
  const int64_t kv_b_head = nope_dim_ + v_dim_;
  std::vector<T> d_kv_b(static_cast<size_t>(rows * heads_ * kv_b_head));  // [rows, heads, nope + v]
  std::vector<T> d_k_pe(static_cast<size_t>(rows * rope_dim_), T(0));     // [rows, rope]
  for (int64_t r = 0; r < rows; ++r) {
    T* d_pe = d_k_pe.data() + r * rope_dim_;
    for (int64_t h = 0; h < heads_; ++h) {
      const T* dkey = dk.data() + (r * heads_ + h) * qk_dim_;
      T* dst = d_kv_b.data() + (r * heads_ + h) * kv_b_head;
      std::copy(dkey, dkey + nope_dim_, dst);
      const T* dval = dv.data() + (r * heads_ + h) * v_dim_;
      std::copy(dval, dval + v_dim_, dst + nope_dim_);
      for (int64_t d = 0; d < rope_dim_; ++d) d_pe[d] += dkey[nope_dim_ + d];
    }
  }
  cpu::rope_bwd(d_k_pe.data(), ctx.rope, ctx.positions.data(), rows, 1, rope_dim_, 0);
  std::vector<T> d_c_kv_normed(static_cast<size_t>(rows * kv_lora_rank_));
  kv_b_proj_.backward_input(ctx.kv_b_proj, d_kv_b.data(), d_c_kv_normed.data());
  std::vector<T> d_c_kv(d_c_kv_normed.size());
  kv_a_layernorm_.backward_input(ctx.kv_a_layernorm, d_c_kv_normed.data(), d_c_kv.data());
  const int64_t kv_a_dim = kv_lora_rank_ + rope_dim_;
  std::vector<T> d_kv_a(static_cast<size_t>(rows * kv_a_dim));  // [rows, kv_lora_rank + rope]
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = d_kv_a.data() + r * kv_a_dim;
    std::copy(d_c_kv.data() + r * kv_lora_rank_, d_c_kv.data() + (r + 1) * kv_lora_rank_, dst);
    std::copy(d_k_pe.data() + r * rope_dim_, d_k_pe.data() + (r + 1) * rope_dim_,
              dst + kv_lora_rank_);
  }
  std::vector<T> dx_q(static_cast<size_t>(rows * hidden_));  // [rows, hidden] from the q path
  kv_a_proj_.backward_input(ctx.kv_a_proj, d_kv_a.data(), dx);

  // Query path.
  cpu::rope_bwd(dq.data(), ctx.rope, ctx.positions.data(), rows, heads_, qk_dim_, nope_dim_);
  if (q_lora_rank_ > 0) {
    std::vector<T> d_c_q_normed(static_cast<size_t>(rows * q_lora_rank_));
    q_b_proj_.backward_input(ctx.q_b_proj, dq.data(), d_c_q_normed.data());
    std::vector<T> d_c_q(d_c_q_normed.size());
    q_a_layernorm_.backward_input(ctx.q_a_layernorm, d_c_q_normed.data(), d_c_q.data());
    q_a_proj_.backward_input(ctx.q_a_proj, d_c_q.data(), dx_q.data());
  } else {
    q_proj_.backward_input(ctx.q_proj, dq.data(), dx_q.data());
  }
  for (int64_t i = 0; i < rows * hidden_; ++i) dx[i] += dx_q[i];
}

template <class T>
void MLA<T>::backward_weight(Ctx& ctx) const {
  if (q_lora_rank_ > 0) {
    q_a_proj_.backward_weight(ctx.q_a_proj);
    q_a_layernorm_.backward_weight(ctx.q_a_layernorm);
    q_b_proj_.backward_weight(ctx.q_b_proj);
  } else {
    q_proj_.backward_weight(ctx.q_proj);
  }
  kv_a_proj_.backward_weight(ctx.kv_a_proj);
  kv_a_layernorm_.backward_weight(ctx.kv_a_layernorm);
  kv_b_proj_.backward_weight(ctx.kv_b_proj);
  o_proj_.backward_weight(ctx.o_proj);
  ctx = Ctx{};
}

template class MLA<float>;
template class MLA<double>;

}  // namespace frugal
