// GpuMla forward and backward (see gpu_mla.h for the computation and the accumulation rule).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_mla.h"

#include <type_traits>

#include "core/error.h"
#include "core/gpu_profiler.h"
#include "kernels/attention/flash_attention_cuda.h"
#include "kernels/attention/mla_glue_cuda.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/rope/rope_cuda.h"

namespace frugal::gpu {
namespace {

MlaRope mla_rope(const RopeInputs& rope) {
  return MlaRope{rope.cos, rope.sin, 0, rope.positions};  // table size unchecked on the device
}

}  // namespace

template <class T>
GpuMla<T>::GpuMla(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
                  Recipe recipe)
    : hidden_(cfg.hidden_size),
      heads_(cfg.num_attention_heads),
      q_lora_rank_(cfg.q_lora_rank),
      kv_lora_rank_(cfg.kv_lora_rank),
      nope_dim_(cfg.qk_nope_head_dim),
      rope_dim_(cfg.qk_rope_head_dim),
      v_dim_(cfg.v_head_dim),
      qk_dim_(cfg.qk_head_dim()),
      softmax_scale_(static_cast<float>(cfg.softmax_scale())) {
  FRUGAL_CHECK(hidden_ > 0 && heads_ > 0 && q_lora_rank_ >= 0 && kv_lora_rank_ > 0 &&
                   nope_dim_ >= 0 && rope_dim_ > 0 && rope_dim_ % 2 == 0 && v_dim_ > 0,
               "{}: bad MLA sizes (hidden {}, heads {}, q_lora_rank {}, kv_lora_rank {}, nope {}, "
               "rope {}, v {})",
               prefix, hidden_, heads_, q_lora_rank_, kv_lora_rank_, nope_dim_, rope_dim_, v_dim_);
  auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    GpuLinear<T> l(registry, in, out, block_linear_precision(recipe, in, out));
    l.register_as(registry, prefix + "." + name + ".weight");
    return l;
  };
  // Registration in the CPU (Hugging Face) module order.
  if (q_lora_rank_ > 0) {
    q_a_proj_ = linear("q_a_proj", hidden_, q_lora_rank_);
    q_a_layernorm_ =
        GpuRMSNorm<T, T>(registry, prefix + ".q_a_layernorm", q_lora_rank_, kLatentNormEps);
    q_b_proj_ = linear("q_b_proj", q_lora_rank_, heads_ * qk_dim_);
  } else {
    q_proj_ = linear("q_proj", hidden_, heads_ * qk_dim_);
  }
  kv_a_proj_ = linear("kv_a_proj_with_mqa", hidden_, kv_lora_rank_ + rope_dim_);
  kv_a_layernorm_ =
      GpuRMSNorm<T, T>(registry, prefix + ".kv_a_layernorm", kv_lora_rank_, kLatentNormEps);
  kv_b_proj_ = linear("kv_b_proj", kv_lora_rank_, heads_ * (nope_dim_ + v_dim_));
  o_proj_ = linear("o_proj", heads_ * v_dim_, hidden_);
}

template <class T>
void GpuMla<T>::refresh(cuda::DeviceContext& ctx) {
  if (q_lora_rank_ > 0) {
    q_a_proj_.refresh(ctx);
    q_b_proj_.refresh(ctx);
  } else {
    q_proj_.refresh(ctx);
  }
  kv_a_proj_.refresh(ctx);
  kv_b_proj_.refresh(ctx);
  o_proj_.refresh(ctx);
}

template <class T>
void GpuMla<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t batch,
                        int64_t seq, const RopeInputs& rope) const {
  FRUGAL_CHECK(batch >= 0 && seq >= 0, "GpuMla::forward: bad batch {} / seq {}", batch, seq);
  const int64_t rows = batch * seq;
  const cudaStream_t stream = ctx.stream;
  c = Ctx{};
  c.batch = batch;
  c.seq = seq;
  c.rope = rope;
  if (rows == 0) return;

  // x feeds q_a_proj (or q_proj) and kv_a_proj: quantize it once when both run FP8.
  const GpuLinear<T>& q_in = q_lora_rank_ > 0 ? q_a_proj_ : q_proj_;
  cuda::DeviceArray<uint8_t> x_q;
  cuda::DeviceArray<float> x_scales;
  Fp8Input x_fp8;
  const Fp8Input* shared_x = nullptr;
  if constexpr (std::is_same_v<T, bf16>) {  // fp8 weights only meet bf16 activations
    if (!q_in.keeps_input_pointer() && !kv_a_proj_.keeps_input_pointer()) {
      x_q = cuda::DeviceArray<uint8_t>(ctx, rows * hidden_);
      x_scales = cuda::DeviceArray<float>(ctx, fp8_block_count(hidden_) * rows);
      cuda::quantize_act_1x128<T>(x_q.data(), x_scales.data(), x, rows, hidden_,
                                  kFp8PowerOfTwoScales, stream);
      x_fp8 = {x_q.data(), x_scales.data()};
      shared_x = &x_fp8;
    }
  }

  // Query path.
  c.q = cuda::DeviceArray<T>(ctx, rows * heads_ * qk_dim_);  // [rows, heads, qk]
  if (q_lora_rank_ > 0) {
    c.c_q = cuda::DeviceArray<T>(ctx, rows * q_lora_rank_);  // [rows, q_lora_rank]
    q_a_proj_.forward(ctx, c.q_a_proj, x, c.c_q.data(), rows, shared_x);
    c.c_q_normed = cuda::DeviceArray<T>(ctx, rows * q_lora_rank_);
    q_a_layernorm_.forward(ctx, c.q_a_layernorm, c.c_q.data(), c.c_q_normed.data(), rows);
    q_b_proj_.forward(ctx, c.q_b_proj, c.c_q_normed.data(), c.q.data(), rows);
    if (!q_b_proj_.keeps_input_pointer()) c.c_q_normed.reset();
  } else {
    q_proj_.forward(ctx, c.q_proj, x, c.q.data(), rows, shared_x);
  }
  cuda::rope_fwd<T>(c.q.data(), rope.cos, rope.sin, rope_dim_, rope.positions, rows, heads_,
                    qk_dim_, nope_dim_, stream);

  // KV path.
  const int64_t kv_a_dim = kv_lora_rank_ + rope_dim_;
  cuda::DeviceArray<T> kv_a(ctx, rows * kv_a_dim);  // [rows, kv_lora_rank + rope]
  kv_a_proj_.forward(ctx, c.kv_a_proj, x, kv_a.data(), rows, shared_x);
  c.c_kv = cuda::DeviceArray<T>(ctx, rows * kv_lora_rank_);  // [rows, kv_lora_rank]
  cuda::copy_2d<T>(c.c_kv.data(), kv_lora_rank_, kv_a.data(), kv_a_dim, rows, kv_lora_rank_,
                   stream);
  c.c_kv_normed = cuda::DeviceArray<T>(ctx, rows * kv_lora_rank_);
  kv_a_layernorm_.forward(ctx, c.kv_a_layernorm, c.c_kv.data(), c.c_kv_normed.data(), rows);
  const int64_t kv_b_head = nope_dim_ + v_dim_;
  cuda::DeviceArray<T> kv_b(ctx, rows * heads_ * kv_b_head);  // [rows, heads, nope + v]
  kv_b_proj_.forward(ctx, c.kv_b_proj, c.c_kv_normed.data(), kv_b.data(), rows);
  if (!kv_b_proj_.keeps_input_pointer()) c.c_kv_normed.reset();

  // key_h = [k_nope_h ; RoPE(k_pe)], v_h, in one pass (k_pe read in place: kv_a's last rope cols).
  c.k = cuda::DeviceArray<T>(ctx, rows * heads_ * qk_dim_);  // [rows, heads, qk]
  c.v = cuda::DeviceArray<T>(ctx, rows * heads_ * v_dim_);   // [rows, heads, v]
  cuda::mla_split_kv<T>(c.k.data(), c.v.data(), kv_b.data(), kv_a.data() + kv_lora_rank_, kv_a_dim,
                        mla_rope(rope), rows, head_dims(), stream);
  kv_b.reset();
  kv_a.reset();

  // Attention, then the output projection.
  c.attn_out = cuda::DeviceArray<T>(ctx, rows * heads_ * v_dim_);  // [rows, heads * v]
  c.lse = cuda::DeviceArray<float>(ctx, batch * heads_ * seq);     // [batch, heads, seq]
  {
    cuda::ScopedSection section(stream, "attn.core.fwd");
    cuda::flash_attention_fwd<T>(c.attn_out.data(), c.lse.data(), c.q.data(), c.k.data(),
                                 c.v.data(), batch, seq, heads_, qk_dim_, v_dim_, softmax_scale_,
                                 stream);
  }
  o_proj_.forward(ctx, c.o_proj, c.attn_out.data(), y, rows);  // [rows, hidden]
}

template <class T>
void GpuMla<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                         WeightGradQueue* deferred) const {
  const int64_t batch = c.batch, seq = c.seq, rows = batch * seq;
  const cudaStream_t stream = ctx.stream;
  if (rows == 0) {
    c = Ctx{};
    return;
  }
  FRUGAL_CHECK(c.q.data() != nullptr, "GpuMla::backward without a forward");
  cuda::DeviceArray<T> d_attn(ctx, rows * heads_ * v_dim_);  // [rows, heads * v]
  o_proj_.backward(ctx, c.o_proj, dy, d_attn.data(), false, deferred);

  cuda::DeviceArray<T> dq(ctx, rows * heads_ * qk_dim_), dk(ctx, rows * heads_ * qk_dim_);
  cuda::DeviceArray<T> dv(ctx, rows * heads_ * v_dim_);
  {
    cuda::ScopedSection section(stream, "attn.core.bwd");
    cuda::DeviceArray<uint8_t> workspace(
        ctx, static_cast<int64_t>(cuda::flash_attention_bwd_workspace_bytes<T>(batch, seq, heads_,
                                                                               qk_dim_, v_dim_)));
    cuda::flash_attention_bwd<T>(dq.data(), dk.data(), dv.data(), d_attn.data(), c.attn_out.data(),
                                 c.lse.data(), c.q.data(), c.k.data(), c.v.data(), batch, seq,
                                 heads_, qk_dim_, v_dim_, softmax_scale_, workspace.data(), stream);
  }
  d_attn.reset();
  c.q.reset();
  c.k.reset();
  c.v.reset();
  c.attn_out.reset();
  c.lse.reset();

  // KV path: d kv_b per head = [dk_nope ; dv]; d_kv_a's rope columns = RoPE_bwd(sum over heads
  // of dk[:, h, nope:]), in one pass; its first kv_lora_rank columns come from the latent norm.
  const int64_t kv_b_head = nope_dim_ + v_dim_;
  const int64_t kv_a_dim = kv_lora_rank_ + rope_dim_;
  cuda::DeviceArray<T> d_kv_b(ctx, rows * heads_ * kv_b_head);  // [rows, heads, nope + v]
  cuda::DeviceArray<T> d_kv_a(ctx, rows * kv_a_dim);            // [rows, kv_lora_rank + rope]
  cuda::mla_merge_kv_grad<T>(d_kv_b.data(), d_kv_a.data() + kv_lora_rank_, kv_a_dim, dk.data(),
                             dv.data(), mla_rope(c.rope), rows, head_dims(), stream);
  dk.reset();
  dv.reset();
  cuda::DeviceArray<T> d_c_kv_normed(ctx, rows * kv_lora_rank_);  // [rows, kv_lora_rank]
  kv_b_proj_.backward(ctx, c.kv_b_proj, d_kv_b.data(), d_c_kv_normed.data(), false, deferred);
  d_kv_b.reset();
  c.c_kv_normed.reset();
  cuda::DeviceArray<T> d_c_kv(ctx, rows * kv_lora_rank_);
  kv_a_layernorm_.backward(ctx, c.kv_a_layernorm, d_c_kv_normed.data(), d_c_kv.data());
  d_c_kv_normed.reset();
  c.c_kv.reset();
  cuda::copy_2d<T>(d_kv_a.data(), kv_a_dim, d_c_kv.data(), kv_lora_rank_, rows, kv_lora_rank_,
                   stream);
  d_c_kv.reset();
  kv_a_proj_.backward(ctx, c.kv_a_proj, d_kv_a.data(), dx, false, deferred);  // [rows, hidden]
  d_kv_a.reset();

  // Query path; its input gradient is added to the kv path's.
  cuda::rope_bwd<T>(dq.data(), c.rope.cos, c.rope.sin, rope_dim_, c.rope.positions, rows, heads_,
                    qk_dim_, nope_dim_, stream);
  if (q_lora_rank_ > 0) {
    cuda::DeviceArray<T> d_c_q_normed(ctx, rows * q_lora_rank_);
    q_b_proj_.backward(ctx, c.q_b_proj, dq.data(), d_c_q_normed.data(), false, deferred);
    dq.reset();
    c.c_q_normed.reset();
    cuda::DeviceArray<T> d_c_q(ctx, rows * q_lora_rank_);
    q_a_layernorm_.backward(ctx, c.q_a_layernorm, d_c_q_normed.data(), d_c_q.data());
    d_c_q_normed.reset();
    q_a_proj_.backward(ctx, c.q_a_proj, d_c_q.data(), dx, true, deferred);
  } else {
    q_proj_.backward(ctx, c.q_proj, dq.data(), dx, true, deferred);
  }
  c = Ctx{};
}

template <class T>
MlaHeadDims GpuMla<T>::head_dims() const {
  return MlaHeadDims{heads_, nope_dim_, rope_dim_, v_dim_};
}

template class GpuMla<float>;
template class GpuMla<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
