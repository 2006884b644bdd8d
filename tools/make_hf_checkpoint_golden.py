#!/usr/bin/env python3
"""Golden files for `frugal convert` and the inference engine: a small random DeepseekV3ForCausalLM
saved by transformers' save_pretrained (sharded, with model.safetensors.index.json), the same weights
in DeepSeek-V3's FP8 release format (F8_E4M3 + weight_scale_inv 128x128 blocks), and reference logits
and greedy continuations for both.

Usage (on the GPU machine: Python 3.12, PyTorch 2.x, transformers 5.x, safetensors; runs on CPU):

    python3 tools/make_hf_checkpoint_golden.py --out tests/golden/hf_checkpoint [--strict]

Writes into OUT:

    bf16/                  model.save_pretrained(OUT/bf16, max_shard_size=SHARD_SIZE): config.json
                           exactly as transformers writes it, model-0000i-of-0000N.safetensors,
                           model.safetensors.index.json (and whatever else save_pretrained writes).
                           Weights are BF16 (values drawn in float64, then rounded to BF16).
    fp8/                   config.json = bf16/config.json + quantization_config {quant_method "fp8",
                           fmt "e4m3", activation_scheme "dynamic", weight_block_size [128, 128]};
                           three shards + index, canonical per-expert names (spec §9.1). The Linear
                           weights of attention and FFN (dense, routed, shared) are F8_E4M3 with an
                           F32 "<name>_scale_inv" [ceil(out/128), ceil(in/128)]: per 128x128 block
                           (edge blocks partial) scale = max(amax, 1e-4) / 448 in float32, codes =
                           float8_e4m3fn(w / scale). Embedding, norms, router gate and lm_head BF16,
                           routing bias F32. Dequantized weights: fp8 value * scale (float32).
    reference.safetensors  input_ids I64 [B, T]; logits_bf16 / logits_fp8 F64 [B, T, V] (transformers,
                           float64, weights = the BF16 values / the dequantized FP8 values);
                           prompt I64 [P] (= input_ids[0, :P]); greedy_bf16 / greedy_fp8 I64 [16]:
                           argmax continuations of the prompt (full forward per token, no cache).
    manifest.json          versions, the case, the seed, margins, checks, file sizes.

The model has hidden size 160, so FP8 weights span several blocks with partial edges. The seed is
advanced until (for both weight sets, over input_ids and over prompt + continuation) every routing
decision has a margin of at least 1e-4 and every greedy step a top-1/top-2 logit margin of at least
1e-3, so a float32 implementation routes and chooses identically. References are computed by
transformers in float64 (its internal float32 casts promoted, as make_golden.py does) and
cross-checked against golden_spec.spec_forward, an independent implementation of the spec.
transformers' DeepSeek-V3 has no MTP module, so the files have none (frugal reads them with
num_nextn_predict_layers = 0). tests/io/test_hf_checkpoint_golden.cc consumes these files.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import traceback
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as mg  # noqa: E402  (sets the offline environment, imports torch/transformers)
from golden_spec import canonical_shapes, init_canonical, is_bias_name, spec_forward, validate_case  # noqa: E402

import torch  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402

CASE = dict(
    name="hf_checkpoint",
    description="3 layers (layer 0 dense), hidden 160 (FP8 blocks with partial edges), 8 experts in 4 "
    "groups, top-2 groups, top-2 experts, 1 shared expert, q LoRA 48, kv LoRA 32, YaRN factor 4 over 16",
    seed=5000,
    vocab_size=131,
    hidden_size=160,
    intermediate_size=200,
    moe_intermediate_size=32,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    num_attention_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    n_group=4,
    topk_group=2,
    max_position_embeddings=64,
    yarn=dict(factor=4.0, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
              original_max_position_embeddings=16),
)
PROMPT_LEN = 8
NEW_TOKENS = 16
MIN_ROUTING_GAP = 1e-4
MIN_LOGIT_GAP = 1e-3
MAX_SEED_TRIES = 64
SHARD_SIZE = "400KB"
BLOCK = 128
FP8_MAX = 448.0
FP8_PROJECTIONS = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                   "gate_proj", "up_proj", "down_proj")


def is_fp8_name(name):
    """DeepSeek-V3's FP8 tensors: the Linear weights of attention and FFN (spec §9.1)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in FP8_PROJECTIONS


def bf16_values(weights):
    return OrderedDict((n, t.to(torch.bfloat16).to(torch.float64)) for n, t in weights.items())


def quantize_fp8(w):
    """w [R, C] (float64 holding BF16 values) -> codes float8_e4m3fn [R, C], scales float32 [R/128, C/128]."""
    w32 = w.to(torch.float32)
    rows, cols = w32.shape
    br, bc = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    codes = torch.empty((rows, cols), dtype=torch.float8_e4m3fn)
    scales = torch.empty((br, bc), dtype=torch.float32)
    for i in range(br):
        for j in range(bc):
            block = w32[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            scale = block.abs().max().clamp(min=1e-4) / FP8_MAX  # float32
            scales[i, j] = scale
            codes[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (block / scale).to(torch.float8_e4m3fn)
    return codes, scales


def dequantize_fp8(codes, scales):
    rows, cols = codes.shape
    full = scales.repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)[:rows, :cols]
    return (codes.to(torch.float32) * full).to(torch.float64)


def fp8_version(weights):
    """(dequantized canonical weights, the tensors to store)."""
    deq, stored = OrderedDict(), OrderedDict()
    for name, t in weights.items():
        if is_fp8_name(name):
            codes, scales = quantize_fp8(t)
            deq[name] = dequantize_fp8(codes, scales)
            stored[name] = codes.contiguous()
            stored[name + "_scale_inv"] = scales.contiguous()
        else:
            deq[name] = t
            stored[name] = t.to(torch.float32 if is_bias_name(name) else torch.bfloat16).contiguous()
    return deq, stored


def spec_margins(weights, ids):
    """Routing gap over ids and over the greedy sequence, smallest greedy logit gap, spec references."""
    with torch.no_grad():
        ref = spec_forward(CASE, weights, ids)
        gap, logit_gap = ref["min_gap"], float("inf")
        seq = ids[0:1, :PROMPT_LEN].clone()
        for _ in range(NEW_TOKENS):
            out = spec_forward(CASE, weights, seq)
            gap = min(gap, out["min_gap"])
            last = out["logits"][0, -1]
            top = last.topk(2).values
            logit_gap = min(logit_gap, (top[0] - top[1]).item())
            seq = torch.cat((seq, last.argmax().reshape(1, 1)), dim=1)
    return gap, logit_gap, ref["logits"], seq[0, PROMPT_LEN:].clone()


def hf_float64_model(cfg, weights, use_mode):
    with mg.precision_ctx(use_mode):
        model = mg.build_model(cfg)
    mg.force_eager(model)
    hf_shapes = {k: tuple(v.shape) for k, v in mg.module_tensors(model).items()}
    fused, layout = mg.canonical_to_hf(weights, model, hf_shapes)
    missing, unexpected = mg.assign_weights(model, fused)
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the HF model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, fused


def hf_logits(model, ids, use_mode):
    with mg.precision_ctx(use_mode), torch.no_grad():
        logits, _ = mg.model_outputs(model(input_ids=ids, use_cache=False))
    return logits.detach().to(torch.float64).clone()


def hf_greedy(model, prompt, use_mode):
    seq = prompt.reshape(1, -1).clone()
    for _ in range(NEW_TOKENS):
        last = hf_logits(model, seq, use_mode)[0, -1]
        seq = torch.cat((seq, last.argmax().reshape(1, 1)), dim=1)
    return seq[0, prompt.numel():].clone()


def save_pretrained_bf16(cfg, fused, out_dir):
    model = transformers.DeepseekV3ForCausalLM(cfg)
    model.to(torch.bfloat16)
    model.eval()
    with torch.no_grad():
        targets = mg.module_tensors(model)
        for name, tensor in fused.items():
            targets[name].copy_(tensor.to(targets[name].dtype))
    errors = []
    for kwargs in (dict(max_shard_size=SHARD_SIZE, safe_serialization=True), dict(max_shard_size=SHARD_SIZE)):
        try:
            model.save_pretrained(out_dir, **kwargs)
            return errors
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
            shutil.rmtree(out_dir, ignore_errors=True)
    raise RuntimeError("save_pretrained failed: " + " | ".join(errors))


def read_saved(out_dir):
    """Every tensor of a saved directory (through its index), as canonical per-expert names."""
    with open(os.path.join(out_dir, "model.safetensors.index.json")) as fh:
        index = json.load(fh)
    tensors, dtypes = OrderedDict(), {}
    for shard in sorted(set(index["weight_map"].values())):
        for name, t in load_file(os.path.join(out_dir, shard)).items():
            tensors[name] = t
            dtypes[name] = str(t.dtype)
    layout = {}
    for name in tensors:
        m = mg.FUSED_NAME.match(name)
        if m:
            layout[m.group(1)] = "fused"
    canonical = mg.hf_to_canonical(OrderedDict((n, t.to(torch.float64)) for n, t in tensors.items()), layout)
    return index, canonical, dtypes, sorted(set(layout.values())) or ["per_expert"]


def write_fp8_dir(bf16_dir, stored, out_dir, shards=3):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(bf16_dir, "config.json")) as fh:
        config = json.load(fh)
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [BLOCK, BLOCK]}
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    weights = [n for n in stored if not n.endswith("_scale_inv")]
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    parts = [OrderedDict() for _ in range(shards)]
    weight_map = OrderedDict()
    for k, name in enumerate(weights):
        for key in (name, name + "_scale_inv"):
            if key in stored:  # a weight and its scale share a shard
                parts[k % shards][key] = stored[key]
                weight_map[key] = files[k % shards]
    total = 0
    for part, file in zip(parts, files):
        save_file(part, os.path.join(out_dir, file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in part.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2, sort_keys=True)
        fh.write("\n")


def rel_max(a, b):
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def run(out_root):
    validate_case(CASE)
    rec, checks = OrderedDict(name=CASE["name"], description=CASE["description"]), OrderedDict()
    rec["definition"] = {k: v for k, v in CASE.items() if k not in ("name", "description")}
    shapes = canonical_shapes(CASE)

    # Seed with clear margins for both weight sets.
    chosen = None
    for attempt in range(MAX_SEED_TRIES):
        seed = CASE["seed"] + attempt
        raw, ids = init_canonical(CASE, shapes, seed)
        w16 = bf16_values(raw)
        w8, stored8 = fp8_version(w16)
        m16, m8 = spec_margins(w16, ids), spec_margins(w8, ids)
        gap = min(m16[0], m8[0])
        logit_gap = min(m16[1], m8[1])
        if chosen is None or min(gap / MIN_ROUTING_GAP, logit_gap / MIN_LOGIT_GAP) > chosen[0]:
            chosen = (min(gap / MIN_ROUTING_GAP, logit_gap / MIN_LOGIT_GAP), seed, ids, w16, w8, stored8, m16, m8)
        if gap >= MIN_ROUTING_GAP and logit_gap >= MIN_LOGIT_GAP:
            break
    _, seed, ids, w16, w8, stored8, m16, m8 = chosen
    rec["seed"] = seed
    rec["routing_min_gap"] = min(m16[0], m8[0])
    rec["greedy_min_logit_gap"] = min(m16[1], m8[1])
    checks["routing_margin"] = "PASS" if rec["routing_min_gap"] >= MIN_ROUTING_GAP else f"FAIL ({rec['routing_min_gap']:.3g})"
    checks["greedy_margin"] = "PASS" if rec["greedy_min_logit_gap"] >= MIN_LOGIT_GAP else f"FAIL ({rec['greedy_min_logit_gap']:.3g})"

    mode_level, _ = mg.fp64_mode_selftest()
    use_mode = mode_level != "none"
    precise = mode_level == "full"
    tol = mg.FP64_TOL if precise else mg.NATIVE_TOL
    rec["precision"] = "fp64-promoted" if precise else ("fp64-promoted-partial" if use_mode else "native")
    cfg, rec["config_build_notes"] = mg.build_hf_config(CASE)

    prompt = ids[0, :PROMPT_LEN].clone()
    refs = OrderedDict()
    for tag, weights, margins in (("bf16", w16, m16), ("fp8", w8, m8)):
        model, fused = hf_float64_model(cfg, weights, use_mode)
        logits = hf_logits(model, ids, use_mode)
        greedy = hf_greedy(model, prompt, use_mode)
        refs[tag] = (logits, greedy, fused)
        rec[f"spec_logits_rel_diff_{tag}"] = rel_max(logits, margins[2])
        checks[f"spec_reference_logits_{tag}"] = "PASS" if rec[f"spec_logits_rel_diff_{tag}"] <= tol \
            else f"FAIL ({rec[f'spec_logits_rel_diff_{tag}']:.3g})"
        checks[f"spec_reference_greedy_{tag}"] = "PASS" if torch.equal(greedy, margins[3]) \
            else f"FAIL (hf {greedy.tolist()}, spec {margins[3].tolist()})"

    os.makedirs(out_root, exist_ok=True)
    bf16_dir, fp8_dir = os.path.join(out_root, "bf16"), os.path.join(out_root, "fp8")
    shutil.rmtree(bf16_dir, ignore_errors=True)
    shutil.rmtree(fp8_dir, ignore_errors=True)
    rec["save_pretrained_retries"] = save_pretrained_bf16(cfg, refs["bf16"][2], bf16_dir)

    # What save_pretrained wrote: an index, several shards, the exact BF16 values.
    index_path = os.path.join(bf16_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        index, saved, dtypes, layout = read_saved(bf16_dir)
        rec["saved_shards"] = sorted(set(index["weight_map"].values()))
        rec["saved_expert_layout"] = layout
        rec["saved_dtypes"] = sorted(set(dtypes.values()))
        checks["index_with_several_shards"] = "PASS" if len(rec["saved_shards"]) >= 2 else "FAIL (one shard)"
        differ = [n for n in w16 if n not in saved or not torch.equal(saved[n], w16[n])]
        extra = sorted(set(saved) - set(w16))
        checks["saved_weights_bitwise"] = "PASS" if not differ and not extra \
            else f"FAIL (differ {differ[:6]}, extra {extra[:6]})"
    else:
        checks["index_with_several_shards"] = "FAIL (no model.safetensors.index.json)"
    with open(os.path.join(bf16_dir, "config.json")) as fh:
        rec["saved_config_keys"] = sorted(json.load(fh).keys())

    # transformers reads its own files back to the same logits.
    try:
        loaded = transformers.DeepseekV3ForCausalLM.from_pretrained(bf16_dir, local_files_only=True)
        loaded.to(dtype=torch.float64)
        loaded.eval()
        mg.force_eager(loaded)
        diff = rel_max(hf_logits(loaded, ids, use_mode), refs["bf16"][0])
        rec["from_pretrained_rel_diff"] = diff
        checks["from_pretrained_logits"] = "PASS" if diff <= tol else f"FAIL ({diff:.3g})"
    except Exception:  # noqa: BLE001
        rec["from_pretrained_error"] = traceback.format_exc()
        checks["from_pretrained_logits"] = "WARN (from_pretrained raised, see manifest)"

    write_fp8_dir(bf16_dir, stored8, fp8_dir)
    back = OrderedDict()
    with open(os.path.join(fp8_dir, "model.safetensors.index.json")) as fh:
        for shard in sorted(set(json.load(fh)["weight_map"].values())):
            back.update(load_file(os.path.join(fp8_dir, shard)))
    bad = [n for n in w8 if is_fp8_name(n) and not torch.equal(
        dequantize_fp8(back[n], back[n + "_scale_inv"]), w8[n])]
    checks["fp8_files_dequantize_to_reference"] = "PASS" if not bad else f"FAIL ({bad[:6]})"
    rec["fp8_tensors"] = sum(1 for n in back if n.endswith("_scale_inv"))
    rec["fp8_multi_block_tensors"] = sum(1 for n, t in back.items() if n.endswith("_scale_inv") and t.numel() > 1)

    reference = OrderedDict()
    reference["input_ids"] = ids.to(torch.int64).contiguous()
    reference["prompt"] = prompt.to(torch.int64).contiguous()
    for tag in ("bf16", "fp8"):
        reference[f"logits_{tag}"] = refs[tag][0].contiguous()
        reference[f"greedy_{tag}"] = refs[tag][1].to(torch.int64).contiguous()
    save_file(reference, os.path.join(out_root, "reference.safetensors"),
              metadata={"format": "pt", "transformers": transformers.__version__, "torch": torch.__version__})

    sizes = OrderedDict()
    for root, _, files in os.walk(out_root):
        for f in sorted(files):
            path = os.path.join(root, f)
            sizes[os.path.relpath(path, out_root)] = os.path.getsize(path)
    rec["files"] = sizes
    rec["bytes_total"] = sum(sizes.values())
    checks["size_under_4MiB"] = "PASS" if rec["bytes_total"] < (4 << 20) else f"WARN ({rec['bytes_total']} bytes)"
    rec["checks"] = checks
    rec["passed"] = all(v == "PASS" or v.startswith("WARN") for v in checks.values())
    return rec


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (e.g. tests/golden/hf_checkpoint)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any check fails")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        transformers.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    manifest = OrderedDict(format_version=1, generator="tools/make_hf_checkpoint_golden.py")
    manifest["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "safetensors": safetensors.__version__}
    manifest["prompt_len"], manifest["new_tokens"] = PROMPT_LEN, NEW_TOKENS
    try:
        rec = run(args.out)
    except Exception:  # noqa: BLE001
        print(traceback.format_exc(), file=sys.stderr)
        return 2
    manifest["case"] = rec
    mg.write_json(os.path.join(args.out, "manifest.json"), manifest)
    for key, val in rec["checks"].items():
        print(f"  {key:40s} {val}")
    print(f"seed {rec['seed']}, routing gap {rec['routing_min_gap']:.3g}, greedy logit gap "
          f"{rec['greedy_min_logit_gap']:.3g}, {rec['bytes_total']} bytes, precision {rec['precision']}")
    print("ALL CHECKS PASSED" if rec["passed"] else "SOME CHECKS FAILED (see manifest.json)")
    return 1 if args.strict and not rec["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
