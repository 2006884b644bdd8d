#!/usr/bin/env python3
"""Training-step throughput of Hugging Face transformers' DeepseekV3ForCausalLM on one GPU: the
side-by-side baseline for build/bench_train_gpu (same model from the same frugal preset, same
random-token workload, same FLOP count, same printed table and JSON keys).

The model comes from the [model] section of a frugal TOML preset (configs/bench-1b.toml by
default; the keys are Hugging Face config.json names), initialized with std train.init_std, in
bfloat16 (--dtype bf16: bf16 parameters, gradients and AdamW state, the usual fast HF setup) or
with fp32 parameters under torch.autocast(bfloat16) (--dtype amp: fp32 masters like frugal's bf16
recipe). transformers' DeepseekV3 has no MTP module, so neither side counts one: MFU uses the
main model's FLOPs only, 3 x (2 x active matrix parameters + causal attention products), the
formula of frugal's Transformer::flops_per_token (embedding excluded, routed experts counted
top_k / n_routed).

One step: forward with labels (the shifted cross-entropy), backward, global-norm clipping at
optim.grad_clip, torch.optim.AdamW(fused=True) with the preset's lr/betas/eps/weight_decay,
zero_grad(set_to_none=True). --warmup untimed steps, then --steps timed ones (cuda synchronize
around each). Peak memory is torch.cuda.max_memory_allocated (the caching allocator's peak bytes
in use, as frugal reports its own allocator's).

Batch 8 x 4096 by default. --checkpointing auto (default) tries without gradient checkpointing
first and with it when that runs out of memory, then halves the batch until a configuration fits;
off / on force one setting; --both measures off and on (each where it fits).

Run on the GPU machine from the repository root:
    python3 tools/bench_hf_train.py --config configs/bench-1b.toml --json bench/results/hf_train.json
"""

import argparse
import json
import statistics
import sys
import time

import torch

import transformers
from hf_preset import PresetError, build_config, format_bytes, format_count, read_preset

try:
    from transformers import DeepseekV3ForCausalLM
except ImportError as exc:  # pragma: no cover - needs transformers >= 4.5x with DeepSeek-V3
    sys.exit(f"bench_hf_train: transformers without DeepseekV3ForCausalLM: {exc}")

H200_DENSE_BF16 = 989e12
H200_DENSE_FP8 = 1979e12


def build_v3_config(preset, init_std, attn_implementation):
    """A DeepseekV3Config from the preset (hf_preset.build_config), for training: no KV cache."""
    if preset["model"].get("model_type", "deepseek_v3") != "deepseek_v3":
        sys.exit("bench_hf_train: the preset's model_type must be deepseek_v3")
    try:
        return build_config(transformers, preset, init_std, attn_implementation, use_cache=False,
                            pad_token_id=None)
    except PresetError as exc:
        sys.exit(f"bench_hf_train: {exc}")


def train_flops_per_token(model, cfg, seq):
    """3 x frugal's Transformer::flops_per_token for the main model."""
    k, n = cfg.num_experts_per_tok, cfg.n_routed_experts
    active = 0.0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embed_tokens" in name:
            continue  # norms, biases, the embedding (a lookup)
        count = float(p.numel())
        if ".mlp.experts." in name:
            count *= k / n
        active += count
    qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    attention = 2.0 * cfg.num_hidden_layers * cfg.num_attention_heads * (qk_head_dim + cfg.v_head_dim) \
        * (seq + 1) / 2
    return 3.0 * (2.0 * active + attention)


def measure(cfg, preset, args, batch, checkpointing):
    """Builds a fresh model and optimizer, runs warmup + timed steps; returns a result dict."""
    torch.manual_seed(preset.get("train", {}).get("seed", 1234))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = DeepseekV3ForCausalLM(cfg).to(device="cuda", dtype=dtype)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optim = preset.get("optim", {})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.get("lr", 2.2e-4),
        betas=(optim.get("beta1", 0.9), optim.get("beta2", 0.95)), eps=optim.get("eps", 1e-8),
        weight_decay=optim.get("weight_decay", 0.1), fused=True)
    grad_clip = optim.get("grad_clip", 1.0)
    params = sum(p.numel() for p in model.parameters())
    flops = train_flops_per_token(model, cfg, args.seq)
    generator = torch.Generator(device="cuda").manual_seed(1)

    step_seconds, losses = [], []
    try:
        for step in range(args.warmup + args.steps):
            tokens = torch.randint(cfg.vocab_size, (batch, args.seq), device="cuda", generator=generator)
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "amp"):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            losses.append(loss.item())
            if step >= args.warmup:
                step_seconds.append(seconds)
            print(f"{'warmup' if step < args.warmup else 'timed'} step {step + 1}: "
                  f"{seconds * 1e3:.1f} ms, loss {losses[-1]:.4f}", flush=True)
        peak = torch.cuda.max_memory_allocated()
    finally:
        del optimizer, model
        torch.cuda.empty_cache()

    mean = sum(step_seconds) / len(step_seconds)
    tok_s = batch * args.seq / mean
    achieved = tok_s * flops
    return {
        "bench": "train_hf", "config": args.config,
        "device": f"{torch.cuda.get_device_name()} (torch {torch.__version__}, "
                  f"transformers {__import__('transformers').__version__})",
        "recipe": f"hf-{args.dtype}", "attn_implementation": args.attn,
        "gradient_checkpointing": checkpointing, "params": params, "batch": batch, "seq": args.seq,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "ms_per_step": mean * 1e3,
        "ms_per_step_median": statistics.median(step_seconds) * 1e3,
        "ms_per_step_min": min(step_seconds) * 1e3, "step_ms": [s * 1e3 for s in step_seconds],
        "tokens_per_s": tok_s, "train_flops_per_token": flops, "model_tflops": achieved / 1e12,
        "mfu_vs_bf16_989": achieved / H200_DENSE_BF16, "mfu_vs_fp8_1979": achieved / H200_DENSE_FP8,
        "peak_memory_bytes": peak, "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
        "first_loss": losses[0], "last_loss": losses[-1],
    }


def print_table(results):
    print(f"{'recipe':<10} {'params':>10} {'batch':>8} {'seq':>6} {'ms/step':>10} {'median':>10} "
          f"{'min':>10} {'tok/s':>12} {'MFU bf16':>9} {'MFU fp8':>9} {'peak mem':>10}  ckpt")
    for r in results:
        print(f"{r['recipe']:<10} {format_count(r['params']):>10} {r['batch']:>8} {r['seq']:>6} "
              f"{r['ms_per_step']:>10.1f} {r['ms_per_step_median']:>10.1f} {r['ms_per_step_min']:>10.1f} "
              f"{format_count(r['tokens_per_s']):>12} {100 * r['mfu_vs_bf16_989']:>8.1f}% "
              f"{100 * r['mfu_vs_fp8_1979']:>8.1f}% {format_bytes(r['peak_memory_bytes']):>10}  "
              f"{'on' if r['gradient_checkpointing'] else 'off'}")
    for r in results:
        print(f"model TFLOP/s {r['model_tflops']:.1f} ({r['train_flops_per_token'] / 1e9:.3g} GFLOP per "
              f"token trained), loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}, "
              f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench-1b.toml", help="frugal TOML preset")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=("bf16", "amp"), default="bf16")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, ...)")
    parser.add_argument("--checkpointing", choices=("auto", "off", "on"), default="auto")
    parser.add_argument("--both", action="store_true", help="measure checkpointing off and on")
    parser.add_argument("--json", help="write the results (a list) here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_hf_train: no CUDA device")
    if args.steps < 1 or args.batch < 1 or args.seq < 2:
        sys.exit("bench_hf_train: --steps, --batch must be >= 1 and --seq >= 2")

    try:
        preset = read_preset(args.config)
    except PresetError as exc:
        sys.exit(f"bench_hf_train: {exc}")
    cfg = build_v3_config(preset, preset.get("train", {}).get("init_std", 0.006), args.attn)
    print(f"{args.config}: DeepseekV3ForCausalLM on {torch.cuda.get_device_name()}, {args.dtype}, "
          f"attention {args.attn}, torch {torch.__version__}")

    if args.both:
        plans = [False, True]
    else:
        plans = {"auto": [False, True], "off": [False], "on": [True]}[args.checkpointing]
    results = []
    for checkpointing in plans:
        batch = args.batch
        while batch >= 1:
            print(f"-- batch {batch} x {args.seq}, gradient checkpointing {'on' if checkpointing else 'off'}",
                  flush=True)
            try:
                results.append(measure(cfg, preset, args, batch, checkpointing))
                break
            except torch.OutOfMemoryError:
                print(f"   out of memory at batch {batch}", flush=True)
                torch.cuda.empty_cache()
                if args.checkpointing == "auto" and not args.both and not checkpointing:
                    break  # auto: try checkpointing on at the full batch before a smaller batch
                batch //= 2
        if results and not args.both:
            break
    if not results:
        sys.exit("bench_hf_train: no configuration fit in memory")
    print()
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
