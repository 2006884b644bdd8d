"""DeepSeek-V3 golden cases, canonical checkpoint names (spec §9.1) and an independent float64
implementation of the spec (§1.4 MLA with YaRN, §2.1 router), used by make_golden.py.

spec_forward follows the official DeepSeek-V3 inference code: interleaved complex RoPE on adjacent
pairs, YaRN frequency ramp (floor/ceil correction range), softmax scale qk_head_dim^-0.5 * mscale^2,
sigmoid router, group score = sum of the top-2 biased scores, dropped groups masked with -inf,
weights = unbiased sigmoid scores of the chosen experts, normalised, times routed_scaling_factor.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

BATCH = 2
SEQ_LEN = 12

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

_BASE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    num_attention_heads=4,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)

CASES = [
    dict(
        _BASE,
        name="v3_groups",
        description="3 layers (layer 0 dense), 8 experts in 4 groups, top-2 groups, top-2 experts, "
        "1 shared expert, q LoRA, YaRN factor 4 over original length 8 (pair 0 kept, pair 1 scaled)",
        seed=1000,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        max_position_embeddings=32,
        yarn=dict(factor=4.0, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                  original_max_position_embeddings=8),
    ),
    dict(
        _BASE,
        name="v3_no_q_lora",
        description="2 layers (layer 0 dense), q_lora_rank None (plain q_proj), 1 group, no RoPE scaling",
        seed=2000,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        q_lora_rank=None,
        n_group=1,
        topk_group=1,
        max_position_embeddings=32,
        yarn=None,
    ),
    dict(
        _BASE,
        name="v3_moe_only_shared2",
        description="2 MoE layers (first_k_dense_replace 0), 2 shared experts (one MLP of width 32), "
        "8 experts in 2 groups, top-1 group, top-3 experts, routed_scaling_factor 1.5, v_head_dim 12 != "
        "qk_nope_head_dim 8, qk_rope_head_dim 8, YaRN factor 40 over 1024 with mscale = mscale_all_dim "
        "= 0.707 (ramp 0, 1/3, 2/3, 1: two blended pairs)",
        seed=3000,
        num_hidden_layers=2,
        first_k_dense_replace=0,
        n_shared_experts=2,
        n_group=2,
        topk_group=1,
        num_experts_per_tok=3,
        routed_scaling_factor=1.5,
        qk_rope_head_dim=8,
        v_head_dim=12,
        max_position_embeddings=40960,
        yarn=dict(factor=40.0, beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707,
                  original_max_position_embeddings=1024),
    ),
]


def validate_case(case):
    e, g, kg, k = case["n_routed_experts"], case["n_group"], case["topk_group"], case["num_experts_per_tok"]
    assert e % g == 0, "n_routed_experts must be a multiple of n_group"
    assert g == 1 or e // g >= 2, "group top-2 needs at least 2 experts per group"
    assert k <= kg * (e // g), "top-k larger than the experts left after group masking"
    assert case["qk_rope_head_dim"] % 2 == 0
    if case["yarn"] is not None:
        assert case["yarn"]["mscale"] == case["yarn"]["mscale_all_dim"], (
            "keep mscale == mscale_all_dim: HF scales cos/sin by their ratio, the official code does not")


# --------------------------------------------------------------------------------------------
# Canonical names (spec §9.1), initialisation
# --------------------------------------------------------------------------------------------


def canonical_shapes(case):
    v, h = case["vocab_size"], case["hidden_size"]
    nh, dn, dr, dv = case["num_attention_heads"], case["qk_nope_head_dim"], case["qk_rope_head_dim"], case["v_head_dim"]
    ql, kvr = case["q_lora_rank"], case["kv_lora_rank"]
    inter, moe_i, e, ns = case["intermediate_size"], case["moe_intermediate_size"], case["n_routed_experts"], case["n_shared_experts"]
    out = OrderedDict()
    out["model.embed_tokens.weight"] = (v, h)
    for layer in range(case["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a = p + "self_attn."
        out[p + "input_layernorm.weight"] = (h,)
        if ql:
            out[a + "q_a_proj.weight"] = (ql, h)
            out[a + "q_a_layernorm.weight"] = (ql,)
            out[a + "q_b_proj.weight"] = (nh * (dn + dr), ql)
        else:
            out[a + "q_proj.weight"] = (nh * (dn + dr), h)
        out[a + "kv_a_proj_with_mqa.weight"] = (kvr + dr, h)
        out[a + "kv_a_layernorm.weight"] = (kvr,)
        out[a + "kv_b_proj.weight"] = (nh * (dn + dv), kvr)
        out[a + "o_proj.weight"] = (h, nh * dv)
        out[p + "post_attention_layernorm.weight"] = (h,)
        m = p + "mlp."
        if layer < case["first_k_dense_replace"]:
            out[m + "gate_proj.weight"] = (inter, h)
            out[m + "up_proj.weight"] = (inter, h)
            out[m + "down_proj.weight"] = (h, inter)
        else:
            out[m + "gate.weight"] = (e, h)
            out[m + "gate.e_score_correction_bias"] = (e,)
            for j in range(e):
                out[m + f"experts.{j}.gate_proj.weight"] = (moe_i, h)
                out[m + f"experts.{j}.up_proj.weight"] = (moe_i, h)
                out[m + f"experts.{j}.down_proj.weight"] = (h, moe_i)
            out[m + "shared_experts.gate_proj.weight"] = (moe_i * ns, h)
            out[m + "shared_experts.up_proj.weight"] = (moe_i * ns, h)
            out[m + "shared_experts.down_proj.weight"] = (h, moe_i * ns)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out


def is_bias_name(name):
    return name.endswith("e_score_correction_bias")


def is_norm_name(name):
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


def init_canonical(case, shapes, seed):
    """Weights: RMSNorm 1 + 0.1 N(0,1); embedding N(0,1); every matrix N(0, 1/fan_in) (std 0.14-0.25
    here, so activations, attention scores and router logits are O(1)); routing bias U[0, 0.05]
    rounded to fp32-representable values (HF keeps that buffer in fp32 when loading)."""
    gen = torch.Generator().manual_seed(seed)
    weights = OrderedDict()
    for name, shape in shapes.items():
        if is_bias_name(name):
            t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 0.05).to(torch.float32).to(torch.float64)
        elif is_norm_name(name):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name == "model.embed_tokens.weight":
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[-1])
        weights[name] = t.contiguous()
    ids = torch.randint(0, case["vocab_size"], (BATCH, SEQ_LEN), generator=gen, dtype=torch.int64)
    return weights, ids


# --------------------------------------------------------------------------------------------
# Independent implementation of the spec (official DeepSeek-V3 semantics), float64
# --------------------------------------------------------------------------------------------


def spec_rope(case, seq_len):
    dr, base, yarn = case["qk_rope_head_dim"], case["rope_theta"], case["yarn"]
    freqs = 1.0 / (base ** (torch.arange(0, dr, 2, dtype=torch.float64) / dr))
    if yarn is not None:
        orig = yarn["original_max_position_embeddings"]

        def corr_dim(rotations):
            return dr * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr_dim(yarn["beta_fast"])), 0)
        high = min(math.ceil(corr_dim(yarn["beta_slow"])), dr - 1)
        top = high + 0.001 if low == high else high
        ramp = ((torch.arange(dr // 2, dtype=torch.float64) - low) / (top - low)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / yarn["factor"] * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)  # [T, dr/2]
    return freqs, torch.cos(angles), torch.sin(angles)


def spec_softmax_scale(case):
    scale = (case["qk_nope_head_dim"] + case["qk_rope_head_dim"]) ** -0.5
    yarn = case["yarn"]
    if yarn is not None and yarn["factor"] > 1:
        mscale = 0.1 * yarn["mscale_all_dim"] * math.log(yarn["factor"]) + 1.0
        scale *= mscale * mscale
    return scale


def spec_rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def spec_rope_apply(x, cos, sin):
    """x [B, T, heads, dr]; adjacent pairs (2i, 2i+1) are one complex number (official layout)."""
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    xe, xo = x[..., 0::2], x[..., 1::2]
    return torch.stack((xe * c - xo * s, xe * s + xo * c), dim=-1).flatten(-2)


def spec_mlp(x, w, prefix):
    return F.linear(F.silu(F.linear(x, w[prefix + "gate_proj.weight"])) * F.linear(x, w[prefix + "up_proj.weight"]),
                    w[prefix + "down_proj.weight"])


def spec_attention(case, x, w, prefix, cos, sin, scale):
    bsz, t, _ = x.shape
    nh, dn, dr, dv = case["num_attention_heads"], case["qk_nope_head_dim"], case["qk_rope_head_dim"], case["v_head_dim"]
    kvr, eps_latent = case["kv_lora_rank"], 1e-6  # HF and the official code use eps 1e-6 for both latents
    if case["q_lora_rank"]:
        q = F.linear(spec_rms(F.linear(x, w[prefix + "q_a_proj.weight"]), w[prefix + "q_a_layernorm.weight"], eps_latent),
                     w[prefix + "q_b_proj.weight"])
    else:
        q = F.linear(x, w[prefix + "q_proj.weight"])
    q = q.view(bsz, t, nh, dn + dr)
    q_nope, q_pe = q[..., :dn], spec_rope_apply(q[..., dn:], cos, sin)
    kv = F.linear(x, w[prefix + "kv_a_proj_with_mqa.weight"])  # [B, T, kvr + dr]
    latent, k_pe = kv[..., :kvr], spec_rope_apply(kv[..., kvr:].unsqueeze(2), cos, sin)  # k_pe [B, T, 1, dr]
    kv = F.linear(spec_rms(latent, w[prefix + "kv_a_layernorm.weight"], eps_latent), w[prefix + "kv_b_proj.weight"])
    kv = kv.view(bsz, t, nh, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    q = torch.cat((q_nope, q_pe), dim=-1)
    k = torch.cat((k_nope, k_pe.expand(bsz, t, nh, dr)), dim=-1)
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    scores = scores + torch.full((t, t), float("-inf"), dtype=scores.dtype).triu(1)
    out = torch.einsum("bhst,bthd->bshd", scores.softmax(dim=-1), v)  # [B, T, heads, dv]
    return F.linear(out.reshape(bsz, t, nh * dv), w[prefix + "o_proj.weight"])


def spec_moe(case, x, w, prefix):
    bsz, t, h = x.shape
    n = bsz * t
    e, g, kg, k = case["n_routed_experts"], case["n_group"], case["topk_group"], case["num_experts_per_tok"]
    xf = x.reshape(n, h)
    scores = F.linear(xf, w[prefix + "gate.weight"]).sigmoid()  # [N, E]
    with torch.no_grad():
        choice = scores.detach() + w[prefix + "gate.e_score_correction_bias"].detach()
        gap = float("inf")
        if g > 1:
            group_scores = choice.view(n, g, e // g).topk(2, dim=-1)[0].sum(dim=-1)  # [N, G]
            if kg < g:
                ordered = group_scores.sort(dim=-1, descending=True)[0]
                gap = min(gap, (ordered[:, kg - 1] - ordered[:, kg]).min().item())
            keep = group_scores.topk(kg, dim=-1)[1]
            drop = torch.ones(n, g, dtype=torch.bool).scatter(1, keep, False)
            choice = choice.view(n, g, e // g).masked_fill(drop.unsqueeze(-1), float("-inf")).reshape(n, e)
        if k < e:
            ordered = choice.sort(dim=-1, descending=True)[0]
            gap = min(gap, (ordered[:, k - 1] - ordered[:, k]).min().item())
        idx = choice.topk(k, dim=-1)[1]  # [N, k]
    weights = scores.gather(1, idx)
    if case["norm_topk_prob"]:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights * case["routed_scaling_factor"]
    dense = torch.zeros(n, e, dtype=weights.dtype).scatter(1, idx, weights)  # [N, E], zero if not chosen
    y = spec_mlp(xf, w, prefix + "shared_experts.")
    for j in range(e):
        y = y + dense[:, j:j + 1] * spec_mlp(xf, w, prefix + f"experts.{j}.")
    return y.view(bsz, t, h), gap, idx.detach(), weights.detach()


def spec_forward(case, w, ids):
    bsz, t = ids.shape
    freqs, cos, sin = spec_rope(case, t)
    scale = spec_softmax_scale(case)
    eps = case["rms_norm_eps"]
    x = F.embedding(ids, w["model.embed_tokens.weight"])
    min_gap, routing = float("inf"), {}
    for layer in range(case["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        x = x + spec_attention(case, spec_rms(x, w[p + "input_layernorm.weight"], eps), w, p + "self_attn.", cos, sin, scale)
        hidden = spec_rms(x, w[p + "post_attention_layernorm.weight"], eps)
        if layer < case["first_k_dense_replace"]:
            x = x + spec_mlp(hidden, w, p + "mlp.")
        else:
            y, gap, idx, weights = spec_moe(case, hidden, w, p + "mlp.")
            x = x + y
            min_gap = min(min_gap, gap)
            routing[layer] = (idx, weights)
    logits = F.linear(spec_rms(x, w["model.norm.weight"], eps), w["lm_head.weight"])
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, case["vocab_size"]), ids[:, 1:].reshape(-1))
    return dict(logits=logits, loss=loss, min_gap=min_gap, routing=routing, inv_freq=freqs, softmax_scale=scale)
