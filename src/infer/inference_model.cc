// Inference forward with absorbed MLA over the paged latent cache (see inference_model.h).
#include "infer/inference_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "infer/row_ops.h"
#include "kernels/moe/permute.h"
#include "kernels/swiglu/swiglu.h"
#include "model/moe.h"

namespace frugal::infer {

InferenceModel::InferenceModel(const Transformer<float>& model)
    : model_(model), cfg_(model.config()), softmax_scale_(cfg_.softmax_scale()) {
  const ParamStore<float>& p = model.params();
  embed_ = p.get("model.embed_tokens.weight").data();
  final_norm_ = p.get("model.norm.weight").data();
  lm_head_ = p.get("lm_head.weight").data();
  if (cfg_.n_routed_experts > 0) router_ = router_params(cfg_);
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i)
    layers_.push_back(load_layer("model.layers." + std::to_string(i), i));
  if (has_mtp()) {
    const std::string prefix = "model.layers." + std::to_string(cfg_.num_hidden_layers);
    enorm_ = p.get(prefix + ".enorm.weight").data();
    hnorm_ = p.get(prefix + ".hnorm.weight").data();
    eh_proj_ = p.get(prefix + ".eh_proj.weight").data();
    mtp_norm_ = p.get(prefix + ".shared_head.norm.weight").data();
    mtp_layer_ = load_layer(prefix, cfg_.num_hidden_layers);
  }
  ensure_rope(std::min<int64_t>(cfg_.max_position_embeddings, 4096));
}

InferenceModel::Layer InferenceModel::load_layer(const std::string& prefix, int64_t index) const {
  const ParamStore<float>& p = model_.params();
  auto w = [&](const std::string& name) { return p.get(prefix + name + ".weight").data(); };
  Layer L;
  L.input_norm = w(".input_layernorm");
  L.post_norm = w(".post_attention_layernorm");
  if (cfg_.q_lora_rank > 0) {
    L.q_a = w(".self_attn.q_a_proj");
    L.q_a_norm = w(".self_attn.q_a_layernorm");
    L.q_b = w(".self_attn.q_b_proj");
  } else {
    L.q = w(".self_attn.q_proj");
  }
  L.kv_a = w(".self_attn.kv_a_proj_with_mqa");
  L.kv_a_norm = w(".self_attn.kv_a_layernorm");
  L.kv_b = w(".self_attn.kv_b_proj");
  L.o = w(".self_attn.o_proj");
  auto mlp = [&](const std::string& name, int64_t inter) {
    return Mlp{w(name + ".gate_proj"), w(name + ".up_proj"), w(name + ".down_proj"), inter};
  };
  L.moe = cfg_.is_moe_layer(index);
  if (!L.moe) {
    L.dense = mlp(".mlp", cfg_.intermediate_size);
    return L;
  }
  L.router = w(".mlp.gate");
  if (router_.topk_method == cpu::TopkMethod::NoauxTc)
    L.bias = p.get(prefix + ".mlp.gate.e_score_correction_bias").data();
  for (int64_t e = 0; e < cfg_.n_routed_experts; ++e)
    L.experts.push_back(mlp(".mlp.experts." + std::to_string(e), cfg_.moe_intermediate_size));
  if (cfg_.n_shared_experts > 0)
    L.shared = mlp(".mlp.shared_experts", cfg_.moe_intermediate_size * cfg_.n_shared_experts);
  return L;
}

PagedLatentCache InferenceModel::make_cache(bool mtp, int64_t page_size, int64_t num_pages) const {
  FRUGAL_CHECK(!mtp || has_mtp(), "the model has no MTP module (num_nextn_predict_layers = 0)");
  return PagedLatentCache(mtp ? 1 : cfg_.num_hidden_layers, entry_dim(), page_size, num_pages);
}

void InferenceModel::ensure_rope(int64_t positions) const {
  if (rope_.positions >= positions) return;
  rope_ = make_rope_table(cfg_, std::max<int64_t>(positions, 2 * rope_.positions));
}

void InferenceModel::embed(const Rows& rows, float* x) const {
  const int64_t d = cfg_.hidden_size;
  for (int64_t r = 0; r < rows.size(); ++r) {
    const int32_t t = rows.tokens[r];
    FRUGAL_CHECK(t >= 0 && t < cfg_.vocab_size, "token id {} outside the vocabulary [0, {})", t,
                 cfg_.vocab_size);
    std::copy(embed_ + static_cast<int64_t>(t) * d, embed_ + (static_cast<int64_t>(t) + 1) * d,
              x + r * d);
  }
}

void InferenceModel::head(const float* normed, const std::vector<int64_t>& logit_rows, int64_t n,
                          std::vector<float>* logits) const {
  if (logits == nullptr) return;
  const int64_t d = cfg_.hidden_size;
  std::vector<float> picked(logit_rows.size() * static_cast<size_t>(d));  // [logit rows, hidden]
  for (size_t i = 0; i < logit_rows.size(); ++i) {
    FRUGAL_CHECK(logit_rows[i] >= 0 && logit_rows[i] < n, "logit row {} of {} rows", logit_rows[i], n);
    std::copy(normed + logit_rows[i] * d, normed + (logit_rows[i] + 1) * d, picked.data() + i * d);
  }
  logits->resize(logit_rows.size() * static_cast<size_t>(cfg_.vocab_size));  // [rows, vocab]
  linear_rows(logits->data(), picked.data(), lm_head_, static_cast<int64_t>(logit_rows.size()),
              cfg_.vocab_size, d);
}

void InferenceModel::forward(const Rows& rows, PagedLatentCache& cache,
                             const std::vector<int64_t>& logit_rows, std::vector<float>* logits,
                             std::vector<float>* hidden) const {
  FRUGAL_CHECK(cache.layers() == cfg_.num_hidden_layers && cache.entry_dim() == entry_dim(),
               "InferenceModel::forward: the cache was not made for this model");
  const int64_t n = rows.size(), d = cfg_.hidden_size;
  std::vector<float> x(static_cast<size_t>(n * d));  // [rows, hidden] residual stream
  embed(rows, x.data());
  for (size_t i = 0; i < layers_.size(); ++i)
    layer_forward(layers_[i], x.data(), rows, cache, static_cast<int64_t>(i));
  std::vector<float> normed(x.size());
  rmsnorm_rows(normed.data(), x.data(), final_norm_, n, d, cfg_.rms_norm_eps);
  head(normed.data(), logit_rows, n, logits);
  if (hidden != nullptr) *hidden = std::move(normed);
}

void InferenceModel::forward_mtp(const Rows& rows, const float* hidden, PagedLatentCache& cache,
                                 const std::vector<int64_t>& logit_rows,
                                 std::vector<float>* logits) const {
  FRUGAL_CHECK(has_mtp(), "the model has no MTP module (num_nextn_predict_layers = 0)");
  FRUGAL_CHECK(cache.layers() == 1 && cache.entry_dim() == entry_dim(),
               "InferenceModel::forward_mtp: the cache was not made for the MTP module");
  const int64_t n = rows.size(), d = cfg_.hidden_size;
  std::vector<float> e(static_cast<size_t>(n * d)), en(e.size()), hn(e.size());
  embed(rows, e.data());
  rmsnorm_rows(en.data(), e.data(), enorm_, n, d, cfg_.rms_norm_eps);
  rmsnorm_rows(hn.data(), hidden, hnorm_, n, d, cfg_.rms_norm_eps);
  std::vector<float> cat(static_cast<size_t>(n * 2 * d));  // [rows, 2 * hidden] = [e ; h]
  for (int64_t r = 0; r < n; ++r) {
    std::copy(en.begin() + r * d, en.begin() + (r + 1) * d, cat.begin() + r * 2 * d);
    std::copy(hn.begin() + r * d, hn.begin() + (r + 1) * d, cat.begin() + r * 2 * d + d);
  }
  std::vector<float> x(static_cast<size_t>(n * d));
  linear_rows(x.data(), cat.data(), eh_proj_, n, d, 2 * d);
  layer_forward(mtp_layer_, x.data(), rows, cache, 0);
  rmsnorm_rows(en.data(), x.data(), mtp_norm_, n, d, cfg_.rms_norm_eps);
  head(en.data(), logit_rows, n, logits);
}

void InferenceModel::layer_forward(const Layer& L, float* x, const Rows& rows,
                                   PagedLatentCache& cache, int64_t cache_layer) const {
  const int64_t n = rows.size(), d = cfg_.hidden_size;
  std::vector<float> normed(static_cast<size_t>(n * d)), branch(normed.size());  // [rows, hidden]
  rmsnorm_rows(normed.data(), x, L.input_norm, n, d, cfg_.rms_norm_eps);
  attention(L, normed.data(), branch.data(), rows, cache, cache_layer);
  for (int64_t i = 0; i < n * d; ++i) x[i] += branch[i];
  rmsnorm_rows(normed.data(), x, L.post_norm, n, d, cfg_.rms_norm_eps);
  if (L.moe)
    moe(L, normed.data(), branch.data(), n);
  else
    mlp(L.dense, normed.data(), branch.data(), n);
  for (int64_t i = 0; i < n * d; ++i) x[i] += branch[i];
}

void InferenceModel::attention(const Layer& L, const float* x, float* y, const Rows& rows,
                               PagedLatentCache& cache, int64_t cache_layer) const {
  const int64_t n = rows.size(), d = cfg_.hidden_size, heads = cfg_.num_attention_heads;
  const int64_t nope = cfg_.qk_nope_head_dim, rope = cfg_.qk_rope_head_dim, vdim = cfg_.v_head_dim;
  const int64_t qk = nope + rope, latent = cfg_.kv_lora_rank, entry = entry_dim();
  int32_t max_position = 0;
  for (int32_t p : rows.positions) max_position = std::max(max_position, p);
  ensure_rope(static_cast<int64_t>(max_position) + 1);

  // Queries [rows, heads, qk], RoPE on the last `rope` dims of each head.
  std::vector<float> q(static_cast<size_t>(n * heads * qk));
  if (cfg_.q_lora_rank > 0) {
    const int64_t ql = cfg_.q_lora_rank;
    std::vector<float> c_q(static_cast<size_t>(n * ql)), c_q_normed(c_q.size());  // [rows, q_lora]
    linear_rows(c_q.data(), x, L.q_a, n, ql, d);
    rmsnorm_rows(c_q_normed.data(), c_q.data(), L.q_a_norm, n, ql, kLatentNormEps);
    linear_rows(q.data(), c_q_normed.data(), L.q_b, n, heads * qk, ql);
  } else {
    linear_rows(q.data(), x, L.q, n, heads * qk, d);
  }
  cpu::rope_fwd(q.data(), rope_, rows.positions.data(), n, heads, qk, nope);

  // Latent entries [rows, latent + rope] -> the cache.
  std::vector<float> kv(static_cast<size_t>(n * entry)), c_kv(static_cast<size_t>(n * latent));
  linear_rows(kv.data(), x, L.kv_a, n, entry, d);
  std::vector<float> k_pe(static_cast<size_t>(n * rope));  // [rows, rope]
  for (int64_t r = 0; r < n; ++r) {
    std::copy(kv.begin() + r * entry, kv.begin() + r * entry + latent, c_kv.begin() + r * latent);
    std::copy(kv.begin() + r * entry + latent, kv.begin() + (r + 1) * entry, k_pe.begin() + r * rope);
  }
  std::vector<float> c_kv_normed(c_kv.size());
  rmsnorm_rows(c_kv_normed.data(), c_kv.data(), L.kv_a_norm, n, latent, kLatentNormEps);
  cpu::rope_fwd(k_pe.data(), rope_, rows.positions.data(), n, 1, rope, 0);
  for (int64_t r = 0; r < n; ++r) {
    float* slot = cache.entry(rows.sequences[r], cache_layer, rows.positions[r]);
    std::copy(c_kv_normed.begin() + r * latent, c_kv_normed.begin() + (r + 1) * latent, slot);
    std::copy(k_pe.begin() + r * rope, k_pe.begin() + (r + 1) * rope, slot + latent);
  }

  // Absorbed attention per (row, head) over the cached positions 0..p.
  std::vector<float> out(static_cast<size_t>(n * heads * vdim));  // [rows, heads * v]
  const int64_t kv_b_head = nope + vdim;
  const int64_t page_size = cache.page_size();
  // The first entry of each page of each row's sequence (rows of one sequence share the list).
  std::vector<std::vector<const float*>> pages;
  std::vector<int64_t> page_list(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    if (r > 0 && rows.sequences[r] == rows.sequences[r - 1]) {
      page_list[r] = page_list[r - 1];
      continue;
    }
    page_list[r] = static_cast<int64_t>(pages.size());
    const int64_t count = static_cast<int64_t>(cache.page_table(rows.sequences[r]).size());
    pages.emplace_back();
    for (int64_t i = 0; i < count; ++i)
      pages.back().push_back(cache.page_entries(rows.sequences[r], cache_layer, i));
  }
#pragma omp parallel if (n * heads * (max_position + 1) * latent > (1 << 14))
  {
    std::vector<float> q_lat(static_cast<size_t>(latent)), o_lat(q_lat.size()), scores;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n * heads; ++task) {
      const int64_t r = task / heads, h = task % heads;
      const std::vector<const float*>& seq_pages = pages[page_list[r]];
      const int64_t keys = static_cast<int64_t>(rows.positions[r]) + 1;
      const float* q_nope = q.data() + (r * heads + h) * qk;
      const float* q_pe = q_nope + nope;
      const float* w_uk = L.kv_b + h * kv_b_head * latent;  // [nope, latent]
      const float* w_uv = w_uk + nope * latent;              // [v, latent]
      std::fill(q_lat.begin(), q_lat.end(), 0.0f);
      for (int64_t i = 0; i < nope; ++i) {
        const float qi = q_nope[i];
        const float* row = w_uk + i * latent;
        for (int64_t c = 0; c < latent; ++c) q_lat[c] += qi * row[c];
      }
      scores.resize(static_cast<size_t>(keys));
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < keys; ++j) {
        const float* e = seq_pages[j / page_size] + (j % page_size) * entry;
        const float s = (dot(q_lat.data(), e, latent) + dot(q_pe, e + latent, rope)) *
                        static_cast<float>(softmax_scale_);
        scores[j] = s;
        max_score = std::max(max_score, s);
      }
      double total = 0;
      for (int64_t j = 0; j < keys; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        total += scores[j];
      }
      std::fill(o_lat.begin(), o_lat.end(), 0.0f);
      for (int64_t j = 0; j < keys; ++j) {
        const float* e = seq_pages[j / page_size] + (j % page_size) * entry;
        const float pj = scores[j];
        for (int64_t c = 0; c < latent; ++c) o_lat[c] += pj * e[c];
      }
      const float inv_total = static_cast<float>(1.0 / total);
      for (int64_t c = 0; c < latent; ++c) o_lat[c] *= inv_total;
      float* o = out.data() + (r * heads + h) * vdim;
      for (int64_t v = 0; v < vdim; ++v) o[v] = dot(w_uv + v * latent, o_lat.data(), latent);
    }
  }
  linear_rows(y, out.data(), L.o, n, d, heads * vdim);
}

void InferenceModel::mlp(const Mlp& w, const float* x, float* y, int64_t n) const {
  const int64_t d = cfg_.hidden_size;
  std::vector<float> g(static_cast<size_t>(n * w.inter)), u(g.size()), h(g.size());
  linear_rows(g.data(), x, w.gate, n, w.inter, d);  // [rows, inter]
  linear_rows(u.data(), x, w.up, n, w.inter, d);
  cpu::swiglu_fwd(h.data(), g.data(), u.data(), n * w.inter);
  linear_rows(y, h.data(), w.down, n, d, w.inter);  // [rows, hidden]
}

void InferenceModel::moe(const Layer& L, const float* x, float* y, int64_t n) const {
  const int64_t d = cfg_.hidden_size, E = router_.n_experts, K = router_.top_k;
  std::vector<float> logits(static_cast<size_t>(n * E)), scores(logits.size());  // [rows, E]
  linear_rows(logits.data(), x, L.router, n, E, d);
  std::vector<int64_t> topk_idx(static_cast<size_t>(n * K));
  std::vector<float> topk_weight(topk_idx.size());
  cpu::router_fwd(topk_idx.data(), topk_weight.data(), scores.data(), logits.data(), L.bias, n,
                  router_);
  std::vector<int64_t> offsets(static_cast<size_t>(E + 1)), sorted(topk_idx.size()),
      assignment_row(topk_idx.size());
  cpu::build_expert_permutation(offsets.data(), sorted.data(), assignment_row.data(),
                                topk_idx.data(), n, K, E);
  std::vector<float> xp(static_cast<size_t>(n * K * d)), expert_out(xp.size());  // [rows*K, hidden]
  cpu::permute_rows(xp.data(), x, sorted.data(), n, K, d);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], count = offsets[e + 1] - begin;
    if (count > 0) mlp(L.experts[e], xp.data() + begin * d, expert_out.data() + begin * d, count);
  }
  const bool shared = L.shared.inter > 0;
  if (shared) mlp(L.shared, x, y, n);
  cpu::combine_fwd(y, expert_out.data(), topk_weight.data(), assignment_row.data(), n, K, d,
                   /*accumulate=*/shared);
}

}  // namespace frugal::infer
