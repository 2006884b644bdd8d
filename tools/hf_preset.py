"""What the transformers baselines (tools/bench_hf_train.py, tools/bench_hf_generate.py) share:
reading a frugal TOML preset, building the matching Hugging Face DeepSeek config, and the number
formats of their tables (the same as the frugal benches print)."""

import sys
import tomllib

# [model] keys of a frugal preset that DeepseekV3Config / DeepseekV2Config take as they are.
HF_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts",
    "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
    "qk_nope_head_dim", "n_group", "topk_group", "num_experts_per_tok", "first_k_dense_replace",
    "norm_topk_prob", "max_position_embeddings", "rms_norm_eps", "hidden_act", "bos_token_id",
    "eos_token_id", "tie_word_embeddings", "attention_bias",
)
# Keys of the preset's [model.rope_scaling] table that Hugging Face's YaRN takes.
YARN_KEYS = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "original_max_position_embeddings")



class PresetError(Exception):
    """A preset these baselines cannot use; the message names the file and the problem."""


def read_preset(path):
    try:
        with open(path, "rb") as f:
            preset = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PresetError(f"{path}: {exc}") from exc
    model = preset.get("model", {})
    missing = [k for k in HF_KEYS if k not in model]
    if missing:
        raise PresetError(f"{path}: [model] lacks {', '.join(missing)}")
    if model.get("model_type", "deepseek_v3") not in ("deepseek_v3", "deepseek_v2"):
        raise PresetError(f"{path}: model_type {model.get('model_type')!r} is neither deepseek_v3 nor deepseek_v2")
    rope_type = (model.get("rope_scaling", {}) or {}).get("type", "none")
    if rope_type not in ("none", "", "yarn"):
        raise PresetError(f"{path}: rope_scaling {rope_type} is not supported here (none or yarn)")
    return preset


def build_config(transformers, preset, init_std, attn_implementation, use_cache=True,
                 pad_token_id="eos"):
    """The preset's Hugging Face config; the rope keywords differ across transformers versions.
    pad_token_id "eos" pads with the preset's end-of-sequence id (generation), else as given."""
    model = preset["model"]
    model_type = model.get("model_type", "deepseek_v3")
    class_name = {"deepseek_v3": "DeepseekV3Config", "deepseek_v2": "DeepseekV2Config"}[model_type]
    config_class = getattr(transformers, class_name, None)
    if config_class is None:
        raise PresetError(f"transformers {transformers.__version__} has no {class_name} "
                          f"(model_type {model_type}); a newer transformers is needed")
    base = {k: model[k] for k in HF_KEYS}
    if base["q_lora_rank"] == 0:
        base["q_lora_rank"] = None  # a plain q_proj (V2-Lite)
    base.update(initializer_range=init_std, attention_dropout=0.0, use_cache=use_cache,
                pad_token_id=model["eos_token_id"] if pad_token_id == "eos" else pad_token_id)
    if model_type == "deepseek_v3":
        base["rope_interleave"] = True
    else:
        base["topk_method"] = model.get("topk_method", "greedy")
    theta = float(model.get("rope_theta", 10000.0))
    scaling = model.get("rope_scaling", {}) or {}
    if scaling.get("type", "none") == "yarn":
        rope = {"rope_type": "yarn", **{k: scaling[k] for k in YARN_KEYS if k in scaling}}
    else:
        rope = {"rope_type": "default"}
    notes = []
    for rope_kw in ({"rope_parameters": {**rope, "rope_theta": theta}},
                    {"rope_theta": theta,
                     "rope_scaling": None if rope["rope_type"] == "default" else rope}):
        try:
            return config_class(**base, **rope_kw, attn_implementation=attn_implementation)
        except Exception as exc:  # noqa: BLE001 - try the next keyword style
            notes.append(f"{sorted(rope_kw)}: {exc!r}")
    raise PresetError(f"could not build {class_name}: " + " | ".join(notes))


def format_count(value):
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            return f"{scaled:.{2 if scaled < 10 else 1 if scaled < 100 else 0}f}{suffix}"
    return f"{value:.0f}"


def format_bytes(count):
    gib = count / 2**30
    return f"{count / 2**20:.0f} MiB" if gib < 1 else f"{gib:.1f} GiB" if gib < 10 else f"{gib:.0f} GiB"
