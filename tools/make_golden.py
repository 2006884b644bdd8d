#!/usr/bin/env python3
"""Golden reference files for frugal's DeepSeek-V3 CPU reference, produced by Hugging Face transformers.

Usage (on the GPU machine: Python 3.12, PyTorch 2.11, transformers 5.x, safetensors; CPU is used):

    python3 tools/make_golden.py --out DIR [--cases v3_groups,v3_no_q_lora] [--strict]

For every case it builds a small random DeepseekV3ForCausalLM in float64 (attn_implementation and
experts_implementation "eager", CPU, fixed seeds), runs the forward with labels=input_ids, runs the
backward, and writes into DIR/<case>/:

    config.json          the full HF config (to_json_string(use_diff=False)) plus the DeepSeek keys
                         that HF drops (scoring_func, topk_method, rope_theta, rope_scaling, ...),
                         listed under "config_keys_added" in the manifest.
    model.safetensors    the weights under the canonical DeepSeek checkpoint names of spec §9.1
                         (per-expert model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight), all F64.
    golden.safetensors   input_ids I64 [B,T]; logits F64 [B,T,V]; loss F64 [1]; grad.<canonical name>
                         F64 for every parameter (e_score_correction_bias is a buffer: no grad);
                         hf_native_logits / hf_native_loss: the same model run by unmodified HF code
                         (which computes some steps in fp32, see below), for information.

and DIR/manifest.json (cases, versions, checks, detected HF behaviour, known differences from the spec).

Facts about transformers 5.x this script relies on (read in its source; all of them are also checked
at run time, so a different version cannot silently produce wrong files):

* modeling_deepseek_v3.py holds the routed experts fused in one module (DeepseekV3NaiveMoe in early
  5.x, DeepseekV3Experts later, decorated with @use_experts_implementation, is_transposed=False):
  gate_up_proj [E, 2*I, H] whose rows [0, I) are gate_proj and rows [I, 2I) are up_proj (forward:
  linear(x, gate_up_proj[e]).chunk(2, dim=-1) -> gate, up), and down_proj [E, H, I] (= per-expert
  down_proj.weight). conversion_mapping.py maps "deepseek_v3" to the "qwen2_moe" pattern, which builds
  gate_up_proj from per-expert checkpoint names with MergeModulelist(dim=0) + Concatenate(dim=1).
  The script splits/merges exactly that way; it also handles an unfused (per-expert) layout.
* The default experts implementation is "grouped_mm" (modeling_utils.get_correct_experts_implementation);
  this script asks for "eager" (config kwarg experts_implementation, then set_experts_implementation).
* q_lora_rank=None is supported (plain self_attn.q_proj), so case v3_no_q_lora runs.
* HF computes several steps in float32 even in a float64 model: RMSNorm (hidden_states.to(float32)),
  the router GEMM (hidden_states.type(float32), weight.type(float32)), the eager softmax
  (dtype=torch.float32), RoPE inv_freq/cos/sin (dtype=torch.float) and the loss (logits.float()).
  The golden tensors are computed with those casts promoted to float64 by a TorchFunctionMode
  (Fp64Mode below: every torch.float32 argument becomes torch.float64 and Tensor.float becomes
  Tensor.double), so they are float64-accurate. The unmodified run is stored as hf_native_*.
  The mode is self-tested first; if it fails the case falls back to the native run and says so
  (precision "native", or "fp64-promoted-partial" when only some casts could be promoted; the
  comparison tolerances then become 1e-4).
* An independent implementation of the spec (spec_forward: official DeepSeek semantics: interleaved
  complex RoPE, YaRN frequency ramp, softmax scale with mscale^2, sigmoid router with group top-2
  sums, -inf group masking, unbiased normalised weights times routed_scaling_factor) runs on the
  canonical weights; its logits, loss and gradients are compared with HF's.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import traceback
from collections import OrderedDict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import transformers  # noqa: E402

try:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402
except ImportError as _exc:  # pragma: no cover
    sys.exit(f"make_golden: transformers {transformers.__version__} has no DeepseekV3 ({_exc})")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_hf_notes import inspect_hf_source, known_differences  # noqa: E402
from golden_spec import (  # noqa: E402
    BATCH, CASES, SEQ_LEN, canonical_shapes, init_canonical, is_bias_name, spec_forward, validate_case)

MIN_ROUTING_GAP = 1e-4  # smallest allowed margin between the last kept and first dropped score
MAX_SEED_TRIES = 64
SIZE_LIMIT_BYTES = 1 << 20  # per case: model + golden
FP64_TOL = 1e-10  # relative tolerance when the golden is float64-accurate
NATIVE_TOL = 1e-4  # relative tolerance when a comparison involves HF's fp32 steps

# --------------------------------------------------------------------------------------------
# float32 -> float64 promotion of HF's internal casts
# --------------------------------------------------------------------------------------------


def _promote(value):
    if value is torch.float32:
        return torch.float64
    if isinstance(value, str) and value == "torch.FloatTensor":
        return "torch.DoubleTensor"
    return value


class Fp64Mode(TorchFunctionMode):
    """Inside this mode every torch call that asks for float32 gets float64 instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) == "float" and args and isinstance(args[0], torch.Tensor):
            func = torch.Tensor.double
        args = tuple(_promote(a) for a in args)
        kwargs = {key: _promote(val) for key, val in kwargs.items()}
        return func(*args, **kwargs)


def fp64_mode_selftest():
    try:
        with Fp64Mode():
            x = torch.ones(3, dtype=torch.float64)
            dtypes = [
                x.to(torch.float32).dtype,
                x.to(dtype=torch.float32).dtype,
                x.to("cpu", torch.float32).dtype,
                x.float().dtype,
                x.type(torch.float32).dtype,
                F.softmax(x, dim=-1, dtype=torch.float32).dtype,
                torch.arange(0, 4, 2, dtype=torch.int64).to(device=None, dtype=torch.float).dtype,
                torch.zeros(2, dtype=torch.float32).dtype,
            ]
        if all(d == torch.float64 for d in dtypes):
            level = "full"
        elif dtypes[0] == torch.float64:
            level = "partial"
        else:
            level = "none"
        return level, [str(d) for d in dtypes]
    except Exception as exc:  # noqa: BLE001
        return "none", [repr(exc)]


def precision_ctx(use_mode):
    return Fp64Mode() if use_mode else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Hugging Face side
# --------------------------------------------------------------------------------------------


def rope_parameters(case):
    if case["yarn"] is None:
        return {"rope_type": "default", "rope_theta": case["rope_theta"]}
    return {"rope_type": "yarn", "rope_theta": case["rope_theta"], **case["yarn"]}


def legacy_rope_scaling(case):
    if case["yarn"] is None:
        return None
    return {"type": "yarn", "rope_type": "yarn", **case["yarn"]}


HF_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group",
    "num_experts_per_tok", "first_k_dense_replace", "norm_topk_prob", "max_position_embeddings", "rms_norm_eps",
)


def config_rope(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if not isinstance(rp, dict) or not rp:
        rp = dict(getattr(cfg, "rope_scaling", None) or {})
        rp.setdefault("rope_theta", getattr(cfg, "rope_theta", None))
    return rp


def rope_config_ok(cfg, case):
    rp = config_rope(cfg)
    kind = rp.get("rope_type", rp.get("type", "default")) or "default"
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None or float(theta) != case["rope_theta"]:
        return False, f"rope_theta {theta}"
    if case["yarn"] is None:
        return kind == "default", f"rope type {kind}"
    if kind != "yarn":
        return False, f"rope type {kind}"
    for key, val in case["yarn"].items():
        if rp.get(key) is None or float(rp[key]) != float(val):
            return False, f"{key}={rp.get(key)}"
    return True, "ok"


def build_hf_config(case):
    base = {key: case[key] for key in HF_KEYS}
    base.update(num_key_value_heads=case["num_attention_heads"], hidden_act="silu", initializer_range=0.02,
                tie_word_embeddings=False, rope_interleave=True, attention_bias=False, attention_dropout=0.0,
                pad_token_id=None, bos_token_id=0, eos_token_id=1, use_cache=False)
    rope_styles = ({"rope_parameters": rope_parameters(case)},
                   {"rope_theta": case["rope_theta"], "rope_scaling": legacy_rope_scaling(case)})
    impl_styles = ({"attn_implementation": "eager", "experts_implementation": "eager"},
                   {"attn_implementation": "eager"}, {})
    notes = []
    for rope_kw in rope_styles:
        for impl_kw in impl_styles:
            try:
                cfg = DeepseekV3Config(**json.loads(json.dumps(base)), **json.loads(json.dumps(rope_kw)), **impl_kw)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{sorted(rope_kw)} {sorted(impl_kw)}: {exc!r}")
                continue
            ok, why = rope_config_ok(cfg, case)
            if ok:
                return cfg, notes
            notes.append(f"{sorted(rope_kw)} {sorted(impl_kw)}: rope not taken ({why})")
    raise RuntimeError("could not build DeepseekV3Config: " + " | ".join(notes))


def force_eager(model):
    cfg = model.config
    notes = []
    if getattr(cfg, "_attn_implementation", None) != "eager":
        try:
            model.set_attn_implementation("eager")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"set_attn_implementation: {exc!r}")
        for attr in ("_attn_implementation_internal", "_attn_implementation"):
            if getattr(cfg, "_attn_implementation", None) != "eager":
                try:
                    setattr(cfg, attr, "eager")
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"{attr}: {exc!r}")
    if getattr(cfg, "_experts_implementation", None) not in (None, "eager"):
        try:
            model.set_experts_implementation("eager")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"set_experts_implementation: {exc!r}")
        for attr in ("_experts_implementation_internal", "_experts_implementation"):
            if getattr(cfg, "_experts_implementation", None) not in (None, "eager"):
                try:
                    setattr(cfg, attr, "eager")
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"{attr}: {exc!r}")
    return {"attn": str(getattr(cfg, "_attn_implementation", None)),
            "experts": str(getattr(cfg, "_experts_implementation", None)), "notes": notes}


def build_model(cfg):
    model = DeepseekV3ForCausalLM(cfg)
    model.to(dtype=torch.float64)
    model.eval()
    return model


def module_tensors(model):
    """Parameters plus the routing-bias buffers, under the module attribute names (no state_dict hooks)."""
    tensors = OrderedDict(model.named_parameters())
    for name, buf in model.named_buffers():
        if is_bias_name(name):
            tensors[name] = buf
    return tensors


def assign_weights(model, hf_weights):
    """Copies hf_weights into the model's parameters/bias buffers; returns (missing, unexpected)."""
    targets = module_tensors(model)
    missing = [n for n in targets if n not in hf_weights]
    unexpected = [n for n in hf_weights if n not in targets]
    with torch.no_grad():
        for name, tensor in hf_weights.items():
            if name not in targets:
                continue
            if tuple(targets[name].shape) != tuple(tensor.shape):
                raise RuntimeError(f"shape of {name}: model {tuple(targets[name].shape)}, canonical "
                                   f"{tuple(tensor.shape)}")
            targets[name].copy_(tensor.to(targets[name].dtype))
    return missing, unexpected


EXPERT_NAME = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
FUSED_NAME = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def experts_transposed(model, prefix, hf_shapes, n_exp, inter, hidden):
    shape = tuple(hf_shapes[prefix + ".gate_up_proj"])
    plain, transposed = (n_exp, 2 * inter, hidden), (n_exp, hidden, 2 * inter)
    if shape == plain and plain != transposed:
        return False
    if shape == transposed and plain != transposed:
        return True
    try:
        return bool(getattr(model.get_submodule(prefix), "is_transposed", False))
    except Exception:  # noqa: BLE001
        return False


def canonical_to_hf(weights, model, hf_shapes):
    """Canonical (per-expert) names -> the names/layout of this transformers version."""
    out, groups, layout = OrderedDict(), OrderedDict(), {}
    for name, tensor in weights.items():
        m = EXPERT_NAME.match(name)
        if m:
            groups.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = tensor
        else:
            out[name] = tensor
    for prefix, parts in groups.items():
        n_exp = 1 + max(j for j, _ in parts)
        if prefix + ".gate_up_proj" in hf_shapes:
            inter, hidden = parts[(0, "gate_proj")].shape
            transposed = experts_transposed(model, prefix, hf_shapes, n_exp, inter, hidden)
            gate_up = torch.stack([torch.cat((parts[(j, "gate_proj")], parts[(j, "up_proj")]), dim=0)
                                   for j in range(n_exp)])  # [E, 2I, H], gate rows first
            down = torch.stack([parts[(j, "down_proj")] for j in range(n_exp)])  # [E, H, I]
            if transposed:
                gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
            out[prefix + ".gate_up_proj"] = gate_up.contiguous()
            out[prefix + ".down_proj"] = down.contiguous()
            layout[prefix] = "fused_transposed" if transposed else "fused"
        else:
            for (j, kind), tensor in parts.items():
                out[f"{prefix}.{j}.{kind}.weight"] = tensor
            layout[prefix] = "per_expert"
    return out, layout


def hf_to_canonical(tensors, layout):
    """Inverse of canonical_to_hf; every output is a fresh tensor (no shared storage)."""
    out = OrderedDict()
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        m = FUSED_NAME.match(name)
        if m and layout.get(m.group(1), "").startswith("fused"):
            prefix, kind = m.group(1), m.group(2)
            full = tensor.transpose(1, 2) if layout[prefix] == "fused_transposed" else tensor
            for j in range(full.shape[0]):
                if kind == "gate_up_proj":
                    inter = full.shape[1] // 2
                    out[f"{prefix}.{j}.gate_proj.weight"] = full[j, :inter].clone().contiguous()
                    out[f"{prefix}.{j}.up_proj.weight"] = full[j, inter:].clone().contiguous()
                else:
                    out[f"{prefix}.{j}.down_proj.weight"] = full[j].clone().contiguous()
        else:
            out[name] = tensor.clone().contiguous()
    return out


def install_routing_capture(model):
    """Records (top_k_index, top_k_weights) passed to each fused experts module."""
    store, handles = {}, []
    pattern = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts$")
    for name, module in model.named_modules():
        m = pattern.match(name)
        if not m or isinstance(module, torch.nn.ModuleList):
            continue

        def hook(_module, args, kwargs, layer=int(m.group(1))):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            index = [a for a in tensors if not a.is_floating_point()]
            if not index:
                return None
            weights = [a for a in tensors if a.is_floating_point() and tuple(a.shape) == tuple(index[0].shape)]
            if weights:
                store[layer] = (index[0].detach().clone(), weights[0].detach().clone())
            return None

        try:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        except Exception:  # noqa: BLE001
            pass
    return store, handles


def model_outputs(out):
    logits = out.logits if hasattr(out, "logits") else out[1]
    loss = out.loss if hasattr(out, "loss") else out[0]
    return logits, loss


def rel_diff(a, b):
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def hf_pass(case, weights, ids, use_mode):
    """Builds the HF model, loads the canonical weights, runs forward + backward. Raises on failure."""
    res = {"precision": "fp64-promoted" if use_mode else "native"}
    cfg, res["config_notes"] = build_hf_config(case)
    res["cfg"] = cfg
    with precision_ctx(use_mode):
        model = build_model(cfg)
    res["implementations"] = force_eager(model)
    hf_shapes = {k: tuple(v.shape) for k, v in module_tensors(model).items()}
    fused, layout = canonical_to_hf(weights, model, hf_shapes)
    res["fused"], res["layout"] = fused, layout
    res["missing_keys"], res["unexpected_keys"] = assign_weights(model, fused)
    try:
        res["lm_head_tied"] = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    except Exception:  # noqa: BLE001
        res["lm_head_tied"] = None
    res["state_canonical"] = hf_to_canonical(module_tensors(model), layout)
    res["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    res["param_count"] = sum(p.numel() for p in model.parameters())

    store, handles = install_routing_capture(model)
    model.zero_grad(set_to_none=True)
    try:
        with precision_ctx(use_mode):
            logits, loss = model_outputs(model(input_ids=ids, labels=ids.clone(), use_cache=False))
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    res["logits"], res["loss"] = logits.detach().clone(), loss.detach().clone().reshape(1)
    res["routing"] = store
    grads = OrderedDict()
    for name, param in model.named_parameters():
        grads[name] = param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param)
    res["grads"] = OrderedDict((n, g) for n, g in hf_to_canonical(grads, layout).items() if not is_bias_name(n))

    try:
        rotary = model.model.rotary_emb
        res["hf_inv_freq"] = [float(v) for v in rotary.inv_freq.detach().to(torch.float64).flatten()]
        res["hf_rotary_attention_scaling"] = float(rotary.attention_scaling)
        res["hf_attention_scaling"] = float(model.model.layers[0].self_attn.scaling)
    except Exception as exc:  # noqa: BLE001
        res["hf_internals_error"] = repr(exc)

    # Reload the canonical weights (through the same split) into a freshly built model.
    with precision_ctx(use_mode):
        fresh = build_model(cfg)
    force_eager(fresh)
    assign_weights(fresh, fused)
    with precision_ctx(use_mode), torch.no_grad():
        res["fresh_logits"], _ = model_outputs(fresh(input_ids=ids, labels=ids.clone(), use_cache=False))
    return res


def hf_native_forward(cfg, fused, ids):
    model = build_model(cfg)
    force_eager(model)
    assign_weights(model, fused)
    with torch.no_grad():
        logits, loss = model_outputs(model(input_ids=ids, labels=ids.clone(), use_cache=False))
    return logits.detach().to(torch.float64).clone(), loss.detach().to(torch.float64).reshape(1).clone()


def check_from_pretrained(case_dir, ids, expect_logits, use_mode, tol):
    """Loads DIR/<case> with from_pretrained (HF's own checkpoint conversion from the canonical names)."""
    options = (dict(dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"),
               dict(dtype=torch.float64, attn_implementation="eager"),
               dict(torch_dtype=torch.float64, attn_implementation="eager"))
    errors = []
    for kwargs in options:
        for loading_info in (True, False):
            try:
                with precision_ctx(use_mode):
                    got = DeepseekV3ForCausalLM.from_pretrained(case_dir, local_files_only=True,
                                                                output_loading_info=loading_info, **kwargs)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{sorted(kwargs)} info={loading_info}: {exc!r}")
                continue
            model, info = (got if loading_info else (got, {}))
            model.to(dtype=torch.float64)
            model.eval()
            force_eager(model)
            with precision_ctx(use_mode), torch.no_grad():
                logits, _ = model_outputs(model(input_ids=ids, labels=ids.clone(), use_cache=False))
            diff = rel_diff(logits, expect_logits)
            try:
                short = {str(k): [str(x) for x in list(v)[:20]] for k, v in dict(info).items() if v}
            except Exception:  # noqa: BLE001
                short = str(info)[:2000]
            return {"status": "PASS" if diff <= tol else "FAIL", "rel_diff": diff, "loading_info": short,
                    "errors_before_success": errors}
    return {"status": "ERROR", "errors": errors}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def config_json(cfg, case):
    try:
        cfg.architectures = ["DeepseekV3ForCausalLM"]
    except Exception:  # noqa: BLE001
        pass
    try:
        data = json.loads(cfg.to_json_string(use_diff=False))
    except Exception:  # noqa: BLE001
        data = json.loads(json.dumps(cfg.to_dict(), default=str))
    extra = OrderedDict([
        ("architectures", ["DeepseekV3ForCausalLM"]), ("model_type", "deepseek_v3"),
        ("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"), ("moe_layer_freq", 1),
        ("num_nextn_predict_layers", 0), ("ep_size", 1), ("torch_dtype", "float64"),
        ("rope_theta", case["rope_theta"]), ("rope_scaling", legacy_rope_scaling(case)),
    ])
    added = []
    for key, val in extra.items():
        if key not in data or (data[key] is None and val is not None):
            data[key] = val
            added.append(key)
    return data, added


def write_json(path, data):
    with open(path, "w") as fh:
        json.dump(sanitize(data), fh, indent=2, sort_keys=True)
        fh.write("\n")


def sanitize(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


def run_case(case, out_root, mode_level):
    rec = OrderedDict(name=case["name"], description=case["description"])
    rec["definition"] = {k: v for k, v in case.items() if k not in ("name", "description")}
    checks = OrderedDict()
    validate_case(case)
    shapes = canonical_shapes(case)

    # Seed: retry until no near-tie in group or expert selection (spec router, float64).
    best = None
    for attempt in range(MAX_SEED_TRIES):
        seed = case["seed"] + attempt
        weights, ids = init_canonical(case, shapes, seed)
        with torch.no_grad():
            gap = spec_forward(case, weights, ids)["min_gap"]
        if best is None or gap > best[0]:
            best = (gap, seed, weights, ids)
        if gap >= MIN_ROUTING_GAP:
            break
    gap, seed, weights, ids = best
    rec["seed"], rec["routing_min_gap"] = seed, gap
    checks["routing_margin"] = "PASS" if gap >= MIN_ROUTING_GAP else f"FAIL (gap {gap:.3g})"

    # Spec reference with gradients.
    leaves = OrderedDict((n, t.clone().requires_grad_(not is_bias_name(n))) for n, t in weights.items())
    ref = spec_forward(case, leaves, ids)
    ref["loss"].backward()
    ref_grads = OrderedDict((n, t.grad if t.grad is not None else torch.zeros_like(t))
                            for n, t in leaves.items() if not is_bias_name(n))

    # Hugging Face pass: float64-promoted first, native as the fallback.
    hf, errors = None, []
    for use_mode in ([True, False] if mode_level != "none" else [False]):
        try:
            hf = hf_pass(case, weights, ids, use_mode)
            break
        except Exception:  # noqa: BLE001
            errors.append(traceback.format_exc())
            print(f"[{case['name']}] HF pass (fp64 mode={use_mode}) failed:\n{errors[-1]}", file=sys.stderr)
    rec["hf_pass_errors"] = errors
    if hf is None:
        raise RuntimeError("every HF pass failed")
    if hf["precision"] == "fp64-promoted" and mode_level == "partial":
        hf["precision"] = "fp64-promoted-partial"  # some fp32 casts were not promoted: fp32-level accuracy
    precise = hf["precision"] == "fp64-promoted"
    tol = FP64_TOL if precise else NATIVE_TOL
    rec["precision"], rec["tolerance"] = hf["precision"], tol
    rec["config_build_notes"] = hf["config_notes"]
    rec["implementations"] = hf["implementations"]
    rec["experts_layout"] = sorted(set(hf["layout"].values()))
    rec["lm_head_tied"] = hf["lm_head_tied"]
    rec["param_dtypes"] = hf["param_dtypes"]

    checks["hf_structure_matches_spec_names"] = (
        "PASS" if not hf["missing_keys"] and not hf["unexpected_keys"]
        else f"FAIL (missing {hf['missing_keys'][:8]}, unexpected {hf['unexpected_keys'][:8]})")
    back = hf["state_canonical"]
    bad = [n for n in weights if n not in back or not torch.equal(back[n].to(torch.float64), weights[n])]
    extra = sorted(set(back) - set(weights))
    checks["canonical_roundtrip_bitwise"] = "PASS" if not bad and not extra else f"FAIL (differ {bad[:8]}, extra {extra[:8]})"
    logits, loss = hf["logits"], hf["loss"]
    fresh_diff = (hf["fresh_logits"].to(torch.float64) - logits.to(torch.float64)).abs().max().item()
    rec["fresh_reload_max_abs_diff"] = fresh_diff
    checks["fresh_model_reload_logits"] = "PASS" if fresh_diff <= 1e-13 * max(1.0, logits.abs().max().item()) \
        else f"FAIL ({fresh_diff:.3g})"
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, case["vocab_size"]).to(torch.float64), ids[:, 1:].reshape(-1))
    ce_diff = abs(ce.item() - loss.item())
    checks["loss_is_mean_shifted_ce"] = "PASS" if ce_diff <= (1e-13 if precise else 1e-5) else f"FAIL ({ce_diff:.3g})"
    dtypes_ok = logits.dtype == torch.float64 and (not precise or loss.dtype == torch.float64) and \
        all(g.dtype == torch.float64 for g in hf["grads"].values())
    checks["float64_outputs"] = "PASS" if dtypes_ok else \
        f"FAIL (logits {logits.dtype}, loss {loss.dtype}, grads {sorted({str(g.dtype) for g in hf['grads'].values()})})"
    grad_names_ok = set(hf["grads"]) == set(ref_grads)
    checks["grad_names_match_spec"] = "PASS" if grad_names_ok else \
        f"FAIL (hf-only {sorted(set(hf['grads']) - set(ref_grads))[:8]}, spec-only {sorted(set(ref_grads) - set(hf['grads']))[:8]})"

    # HF vs the independent spec implementation.
    rec["spec_logits_rel_diff"] = rel_diff(logits, ref["logits"])
    rec["spec_loss_abs_diff"] = abs(loss.item() - ref["loss"].item())
    worst, worst_name = 0.0, None
    global_max = max(g.abs().max().item() for g in ref_grads.values())
    for name, g_ref in ref_grads.items():
        if name not in hf["grads"]:
            continue
        denom = max(g_ref.abs().max().item(), 1e-12 * global_max, 1e-300)
        d = (hf["grads"][name].to(torch.float64) - g_ref).abs().max().item() / denom
        if d > worst:
            worst, worst_name = d, name
    rec["spec_grads_worst_rel_diff"], rec["spec_grads_worst_tensor"] = worst, worst_name
    checks["spec_reference_logits"] = "PASS" if rec["spec_logits_rel_diff"] <= tol else f"FAIL ({rec['spec_logits_rel_diff']:.3g})"
    checks["spec_reference_loss"] = "PASS" if rec["spec_loss_abs_diff"] <= tol * max(1.0, abs(loss.item())) \
        else f"FAIL ({rec['spec_loss_abs_diff']:.3g})"
    checks["spec_reference_grads"] = "PASS" if worst <= (1e-9 if precise else 1e-3) else f"FAIL ({worst:.3g} in {worst_name})"

    # Routing decisions HF made vs the spec router.
    if hf["routing"]:
        mismatched, wdiff = [], 0.0
        for layer, (ref_idx, ref_w) in ref["routing"].items():
            if layer not in hf["routing"]:
                mismatched.append(f"layer {layer} not captured")
                continue
            hf_idx, hf_w = hf["routing"][layer]
            a, b = hf_idx.sort(dim=-1), ref_idx.sort(dim=-1)
            if not torch.equal(a.values.to(torch.int64), b.values.to(torch.int64)):
                mismatched.append(f"layer {layer}")
                continue
            wdiff = max(wdiff, rel_diff(hf_w.gather(1, a.indices), ref_w.gather(1, b.indices)))
        rec["routing_weights_rel_diff"] = wdiff
        checks["routing_matches_spec"] = "PASS" if not mismatched and wdiff <= tol else f"FAIL ({mismatched[:4]}, weights {wdiff:.3g})"
    else:
        checks["routing_matches_spec"] = "SKIP (routing not captured)"

    # YaRN / scale numbers, HF vs spec.
    rec["spec_inv_freq"] = [float(v) for v in ref["inv_freq"]]
    rec["spec_softmax_scale"] = ref["softmax_scale"]
    for key in ("hf_inv_freq", "hf_rotary_attention_scaling", "hf_attention_scaling", "hf_internals_error"):
        if key in hf:
            rec[key] = hf[key]
    if "hf_inv_freq" in hf and len(hf["hf_inv_freq"]) == len(rec["spec_inv_freq"]):
        d = max(abs(a - b) / abs(b) for a, b in zip(hf["hf_inv_freq"], rec["spec_inv_freq"]))
        checks["yarn_inv_freq_matches_spec"] = "PASS" if d <= (1e-14 if precise else 1e-6) else f"FAIL ({d:.3g})"
    if "hf_attention_scaling" in hf:
        d = abs(hf["hf_attention_scaling"] - ref["softmax_scale"]) / ref["softmax_scale"]
        checks["softmax_scale_matches_spec"] = "PASS" if d <= 1e-15 else f"FAIL ({d:.3g})"
        checks["rope_cos_sin_factor_is_1"] = "PASS" if hf["hf_rotary_attention_scaling"] == 1.0 \
            else f"FAIL ({hf['hf_rotary_attention_scaling']!r})"

    # Unmodified HF (fp32 internals) for information.
    native_logits, native_loss = None, None
    try:
        native_logits, native_loss = hf_native_forward(hf["cfg"], hf["fused"], ids)
        rec["hf_native_logits_rel_diff"] = rel_diff(native_logits, logits)
        rec["hf_native_loss_abs_diff"] = abs(native_loss.item() - loss.item())
        checks["hf_native_close"] = "PASS" if rec["hf_native_logits_rel_diff"] <= NATIVE_TOL \
            else f"FAIL ({rec['hf_native_logits_rel_diff']:.3g})"
    except Exception:  # noqa: BLE001
        rec["hf_native_error"] = traceback.format_exc()
        checks["hf_native_close"] = "WARN (native run raised, see manifest)"

    # Write the files.
    case_dir = os.path.join(out_root, case["name"])
    os.makedirs(case_dir, exist_ok=True)
    cfg_data, rec["config_keys_added"] = config_json(hf["cfg"], case)
    write_json(os.path.join(case_dir, "config.json"), cfg_data)
    model_tensors = OrderedDict((n, t.detach().to(torch.float64).clone().contiguous()) for n, t in weights.items())
    save_file(model_tensors, os.path.join(case_dir, "model.safetensors"), metadata={"format": "pt"})
    golden = OrderedDict()
    golden["input_ids"] = ids.to(torch.int64).clone().contiguous()
    golden["logits"] = logits.to(torch.float64).clone().contiguous()
    golden["loss"] = loss.to(torch.float64).reshape(1).clone().contiguous()
    for name in shapes:
        if name in hf["grads"]:
            golden["grad." + name] = hf["grads"][name].to(torch.float64).clone().contiguous()
    if native_logits is not None:
        golden["hf_native_logits"] = native_logits.contiguous()
        golden["hf_native_loss"] = native_loss.contiguous()
    meta = {"format": "pt", "case": case["name"], "precision": hf["precision"],
            "transformers": transformers.__version__, "torch": torch.__version__}
    save_file(golden, os.path.join(case_dir, "golden.safetensors"), metadata=meta)
    sizes = {f: os.path.getsize(os.path.join(case_dir, f)) for f in sorted(os.listdir(case_dir))}
    rec["files"] = sizes
    rec["bytes_total"] = sum(sizes.values())
    checks["size_under_1MiB"] = "PASS" if rec["bytes_total"] < SIZE_LIMIT_BYTES else f"WARN ({rec['bytes_total']} bytes)"

    # HF's own loader on the canonical checkpoint (exercises conversion_mapping / core_model_loading).
    try:
        if hf["precision"].startswith("fp64-promoted"):
            fp = check_from_pretrained(case_dir, ids, logits, True, 1e-12 if precise else NATIVE_TOL)
            if fp["status"] == "ERROR" and native_logits is not None:
                fp = {"fp64_mode": fp, **check_from_pretrained(case_dir, ids, native_logits, False, 1e-10)}
        else:
            fp = check_from_pretrained(case_dir, ids, logits, False, 1e-10)
    except Exception:  # noqa: BLE001
        fp = {"status": "ERROR", "errors": [traceback.format_exc()]}
    rec["from_pretrained"] = fp
    if fp["status"] == "FAIL":
        checks["from_pretrained_canonical_checkpoint"] = f"FAIL ({fp.get('rel_diff', float('nan')):.3g})"
    elif fp["status"] == "ERROR":
        checks["from_pretrained_canonical_checkpoint"] = "WARN (from_pretrained raised, see manifest)"
    else:
        checks["from_pretrained_canonical_checkpoint"] = fp["status"]

    rec["param_count"] = sum(math.prod(s) for n, s in shapes.items() if not is_bias_name(n))
    rec["hf_param_count"] = hf["param_count"]
    checks["param_count_matches"] = "PASS" if rec["param_count"] == rec["hf_param_count"] \
        else f"FAIL (spec {rec['param_count']}, hf {rec['hf_param_count']})"
    rec["loss"] = loss.item()
    rec["max_abs_logit"] = logits.abs().max().item()
    rec["checks"] = checks
    rec["passed"] = all(v == "PASS" or v.startswith("SKIP") or v.startswith("WARN") for v in checks.values())
    return rec


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any check fails")
    args = parser.parse_args()

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        transformers.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    os.makedirs(args.out, exist_ok=True)

    mode_level, mode_probe = fp64_mode_selftest()
    wanted = [c for c in args.cases.split(",") if c]
    cases = [c for c in CASES if not wanted or c["name"] in wanted]
    manifest = OrderedDict()
    manifest["format_version"] = 1
    manifest["generator"] = "tools/make_golden.py"
    manifest["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "safetensors": safetensors.__version__}
    try:
        import numpy
        manifest["versions"]["numpy"] = numpy.__version__
    except Exception:  # noqa: BLE001
        pass
    manifest["batch"], manifest["seq_len"] = BATCH, SEQ_LEN
    manifest["fp64_mode_selftest"] = {"level": mode_level, "dtypes": mode_probe}
    manifest["file_format"] = {
        "config.json": "HF DeepseekV3Config.to_json_string(use_diff=False) plus config_keys_added",
        "model.safetensors": "canonical DeepSeek names (spec 9.1), F64, per-expert experts.E.{gate,up,down}_proj",
        "golden.safetensors": "input_ids I64 [B,T]; logits F64 [B,T,V]; loss F64 [1]; grad.<name> F64 per "
                              "parameter (no e_score_correction_bias); hf_native_logits F64; hf_native_loss F64 [1]",
    }
    manifest["hf_behaviour"] = inspect_hf_source()
    manifest["known_differences_from_spec"] = known_differences(manifest["hf_behaviour"])
    manifest["cases"], manifest["skipped_cases"] = [], []

    for case in cases:
        print(f"=== {case['name']}: {case['description']}")
        try:
            rec = run_case(case, args.out, mode_level)
            manifest["cases"].append(rec)
            for key, val in rec["checks"].items():
                print(f"  {key:40s} {val}")
        except Exception:  # noqa: BLE001
            err = traceback.format_exc()
            print(err, file=sys.stderr)
            manifest["skipped_cases"].append({"name": case["name"], "error": err})
            shutil.rmtree(os.path.join(args.out, case["name"]), ignore_errors=True)

    manifest["all_checks_passed"] = bool(manifest["cases"]) and not manifest["skipped_cases"] and \
        all(r["passed"] for r in manifest["cases"])
    write_json(os.path.join(args.out, "manifest.json"), manifest)

    print()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, fp64 mode self-test: {mode_level}")
    header = f"{'case':22s} {'params':>8s} {'loss':>22s} {'max|logit|':>12s} {'precision':>14s} {'bytes':>8s}  result"
    print(header)
    print("-" * len(header))
    for rec in manifest["cases"]:
        failed = [k for k, v in rec["checks"].items() if not (v == "PASS" or v.startswith("SKIP") or v.startswith("WARN"))]
        result = "PASS" if rec["passed"] else "FAIL: " + ", ".join(failed)
        print(f"{rec['name']:22s} {rec['param_count']:8d} {rec['loss']:22.17f} {rec['max_abs_logit']:12.6f} "
              f"{rec['precision']:>14s} {rec['bytes_total']:8d}  {result}")
    for skipped in manifest["skipped_cases"]:
        print(f"{skipped['name']:22s} SKIPPED (error, see manifest.json)")
    print("ALL CHECKS PASSED" if manifest["all_checks_passed"] else "SOME CHECKS FAILED (see manifest.json)")
    if not manifest["cases"]:
        return 2
    return 1 if args.strict and not manifest["all_checks_passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
