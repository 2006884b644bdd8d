"""What make_golden.py records about the installed transformers: facts read from its source, and the
known differences between transformers' DeepSeek-V3 and the spec (spec/deepseek-v3.md)."""

import inspect
import re
from collections import OrderedDict

# --------------------------------------------------------------------------------------------
# HF behaviour read from the installed source
# --------------------------------------------------------------------------------------------


def inspect_hf_source():
    facts = OrderedDict()
    try:
        import transformers.models.deepseek_v3.modeling_deepseek_v3 as mod
        src = inspect.getsource(mod)
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)}
    lines = src.splitlines()

    def grep(pattern):
        return [line.strip() for line in lines if re.search(pattern, line)]

    facts["router_masked_fill_lines"] = grep(r"masked_fill\(.*score_mask")
    joined = " ".join(facts["router_masked_fill_lines"])
    facts["router_masked_fill_value"] = "-inf" if "-inf" in joined else ("0.0" if "0.0" in joined else "unknown")
    facts["router_fp32_lines"] = grep(r"type\(torch\.float32\)")
    facts["rmsnorm_fp32_lines"] = grep(r"hidden_states\.to\(torch\.float32\)")
    facts["softmax_fp32_lines"] = grep(r"softmax\(.*dtype=torch\.float32")
    facts["norm_denominator_lines"] = grep(r"1e-20")
    facts["expert_classes"] = re.findall(r"^class (DeepseekV3\w*(?:Experts|Moe|MoE)\w*)\(", src, re.MULTILINE)
    facts["use_experts_implementation_decorator"] = "@use_experts_implementation" in src
    facts["rope_interleave_function"] = "def apply_rotary_pos_emb_interleave" in src
    facts["keys_ignored_on_load"] = grep(r"_keys_to_ignore_on_load_unexpected")
    facts["keep_in_fp32"] = grep(r"_keep_in_fp32_modules")
    facts["mscale_lines"] = grep(r"mscale")
    facts["latent_norm_lines"] = grep(r"(q_a_layernorm|kv_a_layernorm) = ")
    try:
        from transformers import conversion_mapping as cm
        m = re.search(r'"deepseek_v3"\s*:\s*"(\w+)"', inspect.getsource(cm))
        facts["conversion_mapping_pattern"] = m.group(1) if m else None
    except Exception as exc:  # noqa: BLE001
        facts["conversion_mapping_pattern"] = f"unavailable: {exc!r}"
    try:
        from transformers import modeling_rope_utils as ru
        ysrc = inspect.getsource(ru._compute_yarn_parameters)
        facts["yarn_has_truncate_option"] = "truncate" in ysrc
        facts["yarn_attention_factor_lines"] = [l.strip() for l in ysrc.splitlines() if "attention_factor =" in l]
    except Exception as exc:  # noqa: BLE001
        facts["yarn_source"] = f"unavailable: {exc!r}"
    return facts


def known_differences(facts):
    fill = facts.get("router_masked_fill_value", "unknown")
    return [
        f"Router group masking: the installed transformers fills masked experts with {fill}; the official code "
        "(since 2025-02-14) uses -inf. Early transformers 5.x used 0.0, the newest uses -inf. The cases use "
        "positive e_score_correction_bias, so every biased score is > 0 and both give the same selection.",
        "Router weight normalisation: HF divides by (sum + 1e-20); the official code by the sum. Identical in "
        "float64 for these sums.",
        "Precision inside HF: RMSNorm, the router GEMM (x and W cast to fp32), the eager softmax, RoPE "
        "(inv_freq and cos/sin) and the loss (logits.float()) run in float32 even in a float64 model. The "
        "golden tensors promote those casts to float64 (Fp64Mode); hf_native_* keep them.",
        "YaRN in HF: applied whenever rope_type is 'yarn' (no max_seq_len > original check); the official "
        "code corrects frequencies and the softmax scale only when max_seq_len > original_seq_len. All cases "
        "have max_position_embeddings > original_max_position_embeddings, so both agree.",
        "Softmax scale in HF: qk_head_dim^-0.5 * m^2 with m = 0.1 * mscale_all_dim * ln(factor) + 1, applied "
        "when rope_type != 'default' and mscale_all_dim is set; the official demo uses its `mscale` key. The "
        "cases keep mscale == mscale_all_dim.",
        "YaRN attention factor in HF: cos and sin are multiplied by get_mscale(factor, mscale) / "
        "get_mscale(factor, mscale_all_dim) when both keys are set (1.0 for V3), but by 0.1*ln(factor)+1 when "
        "either is missing or 0; the official code never scales cos/sin. Checked as rope_cos_sin_factor_is_1.",
        "YaRN ramp in HF: low = floor, high = ceil of the correction dims (truncate defaults to True), then "
        "max(low, 0), min(high, dim-1), ramp over dim/2 pairs; same as the official code.",
        "RoPE layout: with rope_interleave=True HF rotates adjacent pairs (2i, 2i+1) like the official code but "
        "returns q_pe/k_pe de-interleaved (all rotated even slots, then all odd slots) for both q and k; dot "
        "products, hence outputs and gradients, are identical.",
        "Latent norms: q_a_layernorm and kv_a_layernorm use eps 1e-6 always (DeepseekV3RMSNorm default), not "
        "config.rms_norm_eps; the official RMSNorm also defaults to 1e-6. All cases use rms_norm_eps 1e-6.",
        "MTP: HF has no MTP module; weights under model.layers.61.* are ignored on load "
        "(_keys_to_ignore_on_load_unexpected) and num_nextn_predict_layers is unused.",
        "Config keys HF ignores: scoring_func (always sigmoid), topk_method (always noaux_tc), moe_layer_freq "
        "(every layer >= first_k_dense_replace is MoE), ep_size, aux_loss_alpha, seq_aux. config.json carries "
        "them (config_keys_added) for loaders that read them.",
        "Routed experts in HF are fused: gate_up_proj [E, 2I, H] (rows [0, I) gate, [I, 2I) up) and down_proj "
        "[E, H, I]; checkpoints keep per-expert names and HF converts them on load (qwen2_moe pattern). "
        "model.safetensors here uses the per-expert names.",
        "n_group == 1: HF still runs the group step (top-2 sum, keep the only group); the official code skips "
        "it. No effect on the result.",
        "e_score_correction_bias is a buffer (no gradient) kept in fp32 by from_pretrained "
        "(_keep_in_fp32_modules_strict); the values written here are fp32-representable.",
        "Loss: HF ForCausalLMLoss pads labels with -100 and shifts them, cross-entropy mean over the "
        "B*(T-1) predicted positions (the last position has no target).",
    ]
