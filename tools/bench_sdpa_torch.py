#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the shapes of bench/bench_attention_cuda.cc, for a
side-by-side with frugal's flash attention: bf16, causal, 16 heads, qk dim 192, v dim 128, 32768
tokens per call (batch = 32768 / seq), seq 1024, 2048, 4096; cuDNN backend by default.

Tensors are made in frugal's layout [batch, seq, heads, dim] and handed to SDPA as transposed
views [batch, heads, seq, dim], so both sides read the same memory layout. Forward and backward
(torch.autograd.grad of the output against q, k, v, given a random dout) are timed apart with CUDA
events after warm-up; the median is reported. FLOPs as in the C++ benchmark: forward
2 * batch * heads * seq^2 / 2 * (qk + v), backward 2.5 x forward.

    python3 tools/bench_sdpa_torch.py [out.json] [--reps N] [--backend cudnn|flash|efficient|math]
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HEADS, QK_DIM, V_DIM = 32768, 16, 192, 128
BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def median_ms(run, warmup, reps):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def measure(seq, reps, backend):
    batch = TOKENS // seq
    gen = torch.Generator(device="cuda").manual_seed(seq)

    def leaf(dim):  # [batch, seq, heads, dim], as frugal stores it
        return torch.randn(batch, seq, HEADS, dim, device="cuda", dtype=torch.bfloat16,
                           generator=gen).requires_grad_()

    q_leaf, k_leaf, v_leaf = leaf(QK_DIM), leaf(QK_DIM), leaf(V_DIM)
    q, k, v = (t.transpose(1, 2) for t in (q_leaf, k_leaf, v_leaf))  # [batch, heads, seq, dim]
    dout = torch.randn(batch, HEADS, seq, V_DIM, device="cuda", dtype=torch.bfloat16,
                       generator=gen)
    scale = 1.0 / math.sqrt(QK_DIM)

    with sdpa_kernel(BACKENDS[backend]):
        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

        fwd_ms = median_ms(forward, 3, reps)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

        def backward():
            torch.autograd.grad(out, (q_leaf, k_leaf, v_leaf), dout, retain_graph=True)

        bwd_ms = median_ms(backward, 3, reps)

    fwd_flops = 2.0 * batch * HEADS * (seq * seq / 2) * (QK_DIM + V_DIM)
    return {
        "impl": f"torch sdpa ({backend})", "dtype": "bf16", "batch": batch, "seq": seq,
        "heads": HEADS, "qk_dim": QK_DIM, "v_dim": V_DIM, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms,
        "fwd_tflops": fwd_flops / (fwd_ms * 1e-3) / 1e12,
        "bwd_tflops": 2.5 * fwd_flops / (bwd_ms * 1e-3) / 1e12,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_path", nargs="?", default="")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="cudnn")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_sdpa_torch: no CUDA device", file=sys.stderr)
        return 1

    results = [measure(seq, max(1, args.reps), args.backend) for seq in (1024, 2048, 4096)]
    print(f"torch sdpa ({args.backend}), causal, heads {HEADS}, qk {QK_DIM}, v {V_DIM}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'dtype':<6} {'batch':>6} {'seq':>6} {'fwd ms':>10} {'fwd TFLOP/s':>12} "
          f"{'bwd ms':>10} {'bwd TFLOP/s':>12}")
    for r in results:
        print(f"{r['dtype']:<6} {r['batch']:>6} {r['seq']:>6} {r['fwd_ms']:>10.3f} "
              f"{r['fwd_tflops']:>12.1f} {r['bwd_ms']:>10.3f} {r['bwd_tflops']:>12.1f}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
