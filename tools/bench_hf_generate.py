#!/usr/bin/env python3
"""Generation throughput of Hugging Face transformers' generate() on one GPU: the side-by-side
baseline for build/bench_decode_gpu (same model from the same frugal preset, same workload, same
table and JSON keys).

The model comes from the [model] section of a frugal TOML preset (its keys are Hugging Face
config.json names): model_type "deepseek_v3" builds a DeepseekV3Config, "deepseek_v2" (V2-Lite) a
DeepseekV2Config, with random weights (std train.init_std) created on the GPU in bfloat16
(AutoModelForCausalLM.from_config under torch.device("cuda")). transformers has no MTP module, so
there is no speculative decoding here.

Workload, per batch size B: B prompts of --prompt uniform random tokens (fixed seed), greedy
generate(do_sample=False, use_cache=True) of exactly --new tokens (min_new_tokens = max_new_tokens,
so end-of-sequence never stops it). After an untimed warmup (the same B and prompt, a few new
tokens, and one 1-token call), with torch.cuda.synchronize around each call:
    prefill ms        = generate(max_new_tokens=1)           (the prompt's pass + first token)
    decode tokens/s   = B x (new - 1) / (generate(new) - generate(1))
    ms per step       = (generate(new) - generate(1)) / (new - 1)
which is how bench_decode_gpu counts (its first step prefills and samples the first tokens).
A batch size that runs out of memory is reported as such and the next one is tried.

Run on the GPU machine from the repository root:
    python3 tools/bench_hf_generate.py --config configs/bench-1b.toml --batches 1,8,64 \\
        --prompt 128 --new 128 --json bench/results/hf_generate.jsonl
Output: a table, and with --json one JSON object per line per batch size (bench "decode_hf").
"""

import argparse
import json
import sys
import time

from hf_preset import PresetError, build_config, format_bytes, format_count, read_preset

def fail(message):
    sys.exit(f"bench_hf_generate: {message}")


def parse_batches(text):
    try:
        batches = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--batches {text!r}: expected positive integers separated by commas")
    if not batches or min(batches) < 1:
        fail(f"--batches {text!r}: expected positive integers separated by commas")
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench-1b.toml", help="frugal TOML preset")
    parser.add_argument("--batches", default="1,8,64", help="batch sizes, e.g. 1,8,64")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--new", type=int, default=128, help="generated tokens per request")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, ...)")
    parser.add_argument("--json", help="write one JSON object per line per batch size here")
    args = parser.parse_args()
    batches = parse_batches(args.batches)
    if args.prompt < 1 or args.new < 2:
        fail("--prompt must be >= 1 and --new >= 2 (decode time is generate(new) - generate(1))")
    try:
        preset = read_preset(args.config)
    except PresetError as exc:
        fail(str(exc))

    try:
        import torch
    except ImportError:
        fail("needs PyTorch with CUDA (and transformers); run it on the GPU machine")
    if not torch.cuda.is_available():
        fail("no CUDA device: run it on the GPU machine")
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        fail(f"needs transformers: {exc}")
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    model_cfg = preset["model"]
    if args.prompt + args.new > model_cfg["max_position_embeddings"]:
        fail(f"--prompt {args.prompt} + --new {args.new} exceed max_position_embeddings "
             f"{model_cfg['max_position_embeddings']}")
    try:
        cfg = build_config(transformers, preset, preset.get("train", {}).get("init_std", 0.006),
                           args.attn)
    except PresetError as exc:
        fail(str(exc))
    torch.manual_seed(args.seed)
    load_start = time.perf_counter()
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
        except TypeError:  # transformers versions that call it dtype
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - load_start
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    device = (f"{torch.cuda.get_device_name()} (torch {torch.__version__}, transformers "
              f"{transformers.__version__}, {type(model).__name__}, attention {args.attn})")
    print(f"{args.config}: {device}, bf16 weights {format_bytes(weight_bytes)}, "
          f"built in {load_s:.1f} s", flush=True)

    eos = model_cfg["eos_token_id"]

    def generate(input_ids, new_tokens):
        """One timed greedy generate of exactly new_tokens; returns seconds."""
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 do_sample=False, min_new_tokens=new_tokens,
                                 max_new_tokens=new_tokens, use_cache=True, pad_token_id=eos)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        got = out.shape[1] - input_ids.shape[1]
        if got != new_tokens:
            fail(f"generate gave {got} new tokens, expected {new_tokens}")
        return seconds

    json_out = open(args.json, "w") if args.json else None
    results = []
    for batch in batches:
        print(f"-- batch {batch}, prompt {args.prompt}, new {args.new}", flush=True)
        generator = torch.Generator(device="cuda").manual_seed(args.seed)
        prompts = torch.randint(cfg.vocab_size, (batch, args.prompt), device="cuda",
                                generator=generator)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            generate(prompts, min(args.new, 8))  # warmup
            generate(prompts, 1)
            prefill_s = generate(prompts, 1)
            total_s = generate(prompts, args.new)
        except out_of_memory:
            print(f"   out of memory at batch {batch}", flush=True)
            torch.cuda.empty_cache()
            results.append({"batch": batch, "oom": True})
            continue
        decode_s = total_s - prefill_s
        decode_tokens = batch * (args.new - 1)
        result = {
            "bench": "decode_hf", "config": args.config, "device": device, "weights": "bf16",
            "weight_bytes": weight_bytes, "batch": batch, "prompt": args.prompt,
            "new_tokens": args.new, "speculative": False, "prefill_ms": prefill_s * 1e3,
            "prefill_tokens_per_s": batch * args.prompt / prefill_s if prefill_s > 0 else 0.0,
            "decode_s": decode_s, "decode_tokens": decode_tokens,
            "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else 0.0,
            "decode_steps": args.new - 1, "ms_per_step": decode_s * 1e3 / (args.new - 1),
            "total_s": total_s, "generated": batch * args.new,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "attn_implementation": args.attn,
        }
        print(f"   prefill {result['prefill_ms']:.1f} ms, decode {decode_s:.3f} s: "
              f"{result['decode_tokens_per_s']:.1f} tokens/s", flush=True)
        results.append(result)
        if json_out:
            json_out.write(json.dumps(result) + "\n")
            json_out.flush()
    if json_out:
        json_out.close()

    print(f"\n{args.config} on {device}, bf16 weights, prompt {args.prompt}, new {args.new}, greedy")
    print(f"{'batch':>6} {'prefill ms':>11} {'prefill tok/s':>13} {'decode tok/s':>12} "
          f"{'ms/step':>10} {'steps':>7} {'peak mem':>10}")
    for r in results:
        if r.get("oom"):
            print(f"{r['batch']:>6} {'out of memory':>13}")
            continue
        print(f"{r['batch']:>6} {r['prefill_ms']:>11.1f} {format_count(r['prefill_tokens_per_s']):>13} "
              f"{r['decode_tokens_per_s']:>12.1f} {r['ms_per_step']:>10.2f} {r['decode_steps']:>7} "
              f"{format_bytes(r['peak_memory_bytes']):>10}")
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
