#!/usr/bin/env bash
# MTP speculative decoding on one GPU, run ON THE GPU MACHINE from the repository root after a CUDA
# build (build-gpu/, or FRUGAL_BUILD_DIR): trains the small preset (one MTP module) on the GPU on
# gutenberg bytes, then decodes greedily with and without speculation:
#   1. frugal generate RUN --device cuda --stats [--speculative] on a fixed English prompt
#      (batch 1, the command a user runs): tokens/s, MTP acceptance, and whether the outputs match;
#   2. bench_decode_gpu --checkpoint RUN --speculative at batches 1 and 8 (random prompts).
#
#   scripts/spec_decode_round.sh [--steps N] [--data DIR] [--out DIR] [--new N]
#
# Outputs (logs, metrics, the two generations) go to --out (default runs/spec_decode) and to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=1500
data=../shared/data
out=runs/spec_decode
new=400
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    *) echo "spec_decode_round: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
die() { echo "spec_decode_round: $*" >&2; exit 1; }
build=${FRUGAL_BUILD_DIR:-build-gpu}
frugal=$build/frugal
[ -x "$frugal" ] || die "$frugal not found: build with CUDA first"
[ -f "$data/gutenberg_en_train.txt.zst" ] || die "$data/gutenberg_en_train.txt.zst not found (--data DIR)"
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer"
mkdir -p "$out"
run=$out/small-mtp

if [ ! -f "$run/frugal.toml" ]; then
  warmup=$(( steps / 10 < 200 ? steps / 10 : 200 ))
  echo "== train configs/small.toml on the GPU (bf16, $steps steps, gutenberg bytes)"
  start=$(date +%s)
  "$frugal" train configs/small.toml --train.device=cuda --train.precision=bf16 \
    --train.steps="$steps" --train.eval_every=0 --train.save_every=0 --train.log_every=100 \
    --schedule.warmup_steps="$warmup" --schedule.decay_start="$warmup" \
    --schedule.decay_end="$steps" --schedule.final_start=-1 \
    --data.train_path="$data/gutenberg_en_train.txt.zst" \
    --data.val_path="$data/gutenberg_en_val.txt.zst" --data.tokenizer=bytes \
    --train.out_dir="$run" > "$out/train.log" 2>&1 || { tail -20 "$out/train.log"; die "training failed"; }
  grep -E "^step " "$out/train.log" | tail -n 2
  echo "   trained in $(( $(date +%s) - start )) s"
fi

prompt="It was a bright cold day in April, and the clocks were striking thirteen. The old man"
echo "== frugal generate --device cuda, greedy, $new new tokens"
for mode in plain speculative; do
  flags=(--device cuda --stats --generate.temperature=0 --generate.max_new_tokens="$new")
  [ "$mode" = speculative ] && flags+=(--speculative)
  "$frugal" generate "$run" --prompt "$prompt" "${flags[@]}" > "$out/generate_$mode.txt" \
    2> "$out/generate_$mode.stats" || { cat "$out/generate_$mode.stats"; die "generate ($mode) failed"; }
  echo "   $mode: $(grep -E 'tokens/s' "$out/generate_$mode.stats")"
done
if cmp -s "$out/generate_plain.txt" "$out/generate_speculative.txt"; then
  echo "   speculative output == plain output"
else
  echo "   speculative output DIFFERS from plain output"
fi
head -c 600 "$out/generate_plain.txt"; echo

echo "== bench_decode_gpu --checkpoint (random prompts), batches 1 and 8"
"$build/bench_decode_gpu" --checkpoint "$run" --speculative --batches 1,8 --prompt 64 \
  --new 256 --json "$out/bench_decode_spec.jsonl" 2>&1 | tee "$out/bench_decode_spec.log"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/spec_decode"
  cp "$out"/*.log "$out"/*.txt "$out"/*.stats "$out"/*.jsonl "$OUT/spec_decode/" 2>/dev/null || true
  cp "$run/metrics.jsonl" "$OUT/spec_decode/train_metrics.jsonl" 2>/dev/null || true
fi
