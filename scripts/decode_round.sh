#!/usr/bin/env bash
# Decode benchmarks, frugal against transformers, run ON THE GPU MACHINE from the repository root
# after a CUDA build (scripts/gpu_round.sh makes build-gpu/; FRUGAL_BUILD_DIR picks another):
#   frugal:        build-gpu/bench_decode_gpu CONFIG --weights bf16 (with --speculative when the
#                  config has an MTP module) and --weights fp8;
#   transformers:  tools/bench_hf_generate.py --config CONFIG (bf16 generate());
# for configs/bench-1b.toml and configs/v2-lite-16b.toml, batches 1,8,64, 128 prompt tokens and
# 128 new tokens (random weights, greedy), each run under a timeout; then one summary table:
# decode tokens/s of frugal bf16 / fp8 (and bf16 with MTP speculation), of transformers, and the
# ratios frugal / transformers.
#
#   scripts/decode_round.sh [--configs "bench-1b v2-lite-16b"] [--sides "frugal hf"]
#                           [--batches 1,8,64] [--prompt 128] [--new 128] [--timeout S]
#                           [--summary-only]
#
# Results (JSON lines and logs) go to $DECODE_DIR (default build-gpu/decode, kept between calls
# on the same machine, so a round may be split: e.g. --configs bench-1b, then --configs
# v2-lite-16b --sides frugal, then --sides hf) and are copied to $OUT when it is set. The summary
# covers every result file there. A run that fails or times out is reported and the round goes on.
# Exit status: 0 when every run of this call succeeded.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

build_dir=${FRUGAL_BUILD_DIR:-build-gpu}
results=${DECODE_DIR:-$build_dir/decode}
configs="bench-1b v2-lite-16b"
sides="frugal hf"
batches=1,8,64
prompt=128
new=128
timeout_s=500
summary_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --configs) configs=$2; shift 2 ;;
    --sides) sides=$2; shift 2 ;;
    --batches) batches=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --summary-only) summary_only=1; shift ;;
    *) echo "decode_round: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
mkdir -p "$results"
failures=0

# run NAME COMMAND...: COMMAND under the timeout, output to $results/NAME.log, table to stdout.
run() {
  local name=$1
  shift
  printf '\n==== %s ====\n%s\n' "$name" "$*"
  timeout --kill-after=20 "$timeout_s" "$@" > "$results/$name.log" 2>&1
  local rc=$?
  # The table: everything after the blank line that precedes it.
  awk 'BEGIN { blank = 0 } /^$/ { blank = NR } { line[NR] = $0 } END { for (i = blank + 1; i <= NR; ++i) print line[i] }' \
    "$results/$name.log"
  if [ $rc -ne 0 ]; then
    failures=$((failures + 1))
    [ $rc -eq 124 ] && echo "decode_round: $name timed out after $timeout_s s" \
                    || echo "decode_round: $name failed (exit $rc); last lines:"
    tail -5 "$results/$name.log"
  fi
}

has_mtp() {
  python3 -c 'import sys, tomllib
print(int(tomllib.load(open(sys.argv[1], "rb"))["model"].get("num_nextn_predict_layers", 0) > 0))' "$1"
}

if [ $summary_only -eq 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "decode_round: nvidia-smi failed"
  bench=$build_dir/bench_decode_gpu
  for config in $configs; do
    toml=configs/$config.toml
    [ -f "$toml" ] || { echo "decode_round: no $toml"; failures=$((failures + 1)); continue; }
    common=(--batches "$batches" --prompt "$prompt" --new "$new")
    for side in $sides; do
      case "$side" in
        frugal)
          if [ ! -x "$bench" ]; then
            echo "decode_round: $bench is missing: build it first (scripts/gpu_round.sh)"
            failures=$((failures + 1))
            continue
          fi
          spec=()
          [ "$(has_mtp "$toml")" = 1 ] && spec=(--speculative)
          run "frugal_${config}_bf16" "$bench" "$toml" --weights bf16 "${common[@]}" "${spec[@]}" \
            --json "$results/frugal_${config}_bf16.jsonl"
          run "frugal_${config}_fp8" "$bench" "$toml" --weights fp8 "${common[@]}" \
            --json "$results/frugal_${config}_fp8.jsonl"
          ;;
        hf)
          run "hf_${config}" python3 tools/bench_hf_generate.py --config "$toml" "${common[@]}" \
            --json "$results/hf_${config}.jsonl"
          ;;
        *) echo "decode_round: unknown side $side (frugal, hf)"; failures=$((failures + 1)) ;;
      esac
    done
  done
fi

printf '\n==== summary: decode tokens/s (prompt %s, new %s, greedy, random weights) ====\n' "$prompt" "$new"
python3 - "$results" <<'EOF' | tee "$results/summary.txt"
import glob, json, os, sys

rows = {}  # (config, batch) -> {column: tokens/s}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.jsonl"))):
    with open(path) as f:
        for text in f:
            text = text.strip()
            if not text:
                continue
            r = json.loads(text)
            config = os.path.splitext(os.path.basename(r.get("config") or r.get("checkpoint", "?")))[0]
            if r["bench"] == "decode_hf":
                column = "hf"
            elif r.get("speculative"):
                column = f"frugal {r['weights']} mtp"
            else:
                column = f"frugal {r['weights']}"
            rows.setdefault((config, r["batch"], r["prompt"], r["new_tokens"]), {})[column] = r
if not rows:
    print("no results")
    sys.exit(0)
columns = ["frugal bf16", "frugal fp8", "frugal bf16 mtp", "hf"]
header = f"{'config':<14} {'batch':>5} " + " ".join(f"{c:>16}" for c in columns) + \
         f" {'bf16/hf':>8} {'fp8/hf':>8} {'mtp accept':>10}"
print(header)
summary = []
for (config, batch, prompt, new), found in sorted(rows.items()):
    speed = {c: found[c]["decode_tokens_per_s"] for c in columns if c in found}
    cells = " ".join(f"{speed[c]:>16.1f}" if c in speed else f"{'-':>16}" for c in columns)
    ratio = lambda c: f"{speed[c] / speed['hf']:>7.2f}x" if c in speed and speed.get("hf") else f"{'-':>8}"
    mtp = found.get("frugal bf16 mtp")
    accept = f"{100 * mtp['acceptance']:>9.1f}%" if mtp else f"{'-':>10}"
    print(f"{config:<14} {batch:>5} {cells} {ratio('frugal bf16')} {ratio('frugal fp8')} {accept}")
    summary.append({"config": config, "batch": batch, "prompt": prompt, "new_tokens": new,
                    "decode_tokens_per_s": speed,
                    "frugal_bf16_over_hf": speed["frugal bf16"] / speed["hf"]
                    if "frugal bf16" in speed and speed.get("hf") else None,
                    "frugal_fp8_over_hf": speed["frugal fp8"] / speed["hf"]
                    if "frugal fp8" in speed and speed.get("hf") else None,
                    "mtp_acceptance": mtp["acceptance"] if mtp else None,
                    "mtp_speedup": mtp["speedup"] if mtp else None})
with open(os.path.join(sys.argv[1], "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
EOF

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/decode"
  cp "$results"/*.log "$results"/*.jsonl "$results"/summary.* "$OUT/decode/" 2>/dev/null
fi
echo
[ $failures -eq 0 ] && echo "decode_round: all runs succeeded" || echo "decode_round: $failures run(s) failed"
[ $failures -eq 0 ]
