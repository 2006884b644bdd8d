#!/usr/bin/env bash
# FP8 against BF16 on one GPU: the same model (configs/small.toml unless --preset), the same data,
# the same seed, N steps each with train.device = cuda; then tools/loss_curves.py compares the
# two curves (spec §4.5: DeepSeek-V3 reports a relative loss error below 0.25% for FP8).
# Run ON THE GPU MACHINE from the repository root, after a CUDA build (scripts/gpu_round.sh makes
# build-gpu/; FRUGAL_BUILD_DIR picks another).
#
#   scripts/fp8_vs_bf16.sh [--steps N] [--data DIR] [--bpe VOCAB] [--out DIR] [--preset FILE]
#                          [--section.key=value ...]
#
#   --steps N      optimizer steps per run (default 2000); the learning rate warms up over
#                  min(200, N/10) steps and decays (cosine) to the preset's min_lr at step N
#   --data DIR     folder with gutenberg_en_train.txt.zst and gutenberg_en_val.txt.zst
#                  (default ../shared/data)
#   --bpe VOCAB    train a byte-level BPE of VOCAB tokens on the training text with
#                  `frugal data tokenizer-train`, tokenize it with `frugal data tokenize`, and train
#                  on that dataset (validation: 2% of its documents held out). Without it the runs
#                  are byte-level on the text files (train on gutenberg train, validate on gutenberg
#                  val). Tokenizer and dataset are kept in OUT and reused by a second call.
#   --out DIR      where the runs go (default runs/fp8_vs_bf16): OUT/bf16, OUT/fp8 (replaced on
#                  every call), OUT/fp8_vs_bf16.png and .json; copied to $OUT when that is set
#   other --section.key=value arguments go to both `frugal train` calls
# Exit status: 0 when both runs finished and the comparison was written.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=2000
data=../shared/data
bpe=0
out=runs/fp8_vs_bf16
preset=configs/small.toml
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --bpe) bpe=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --*=*) extra+=("$1"); shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "fp8_vs_bf16: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "fp8_vs_bf16: $*" >&2; exit 1; }
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$steps'"
[[ "$bpe" =~ ^[0-9]+$ ]] || die "--bpe must be a vocabulary size, got '$bpe'"
build=${FRUGAL_BUILD_DIR:-build-gpu}
frugal=$build/frugal
[ -x "$frugal" ] || die "$frugal not found: build with CUDA first (scripts/gpu_round.sh)"
train_text=$data/gutenberg_en_train.txt.zst
val_text=$data/gutenberg_en_val.txt.zst
[ -f "$train_text" ] || die "$train_text not found (pass --data DIR)"
[ -f "$preset" ] || die "$preset not found"
mkdir -p "$out"

warmup=$(( steps / 10 < 200 ? steps / 10 : 200 ))
eval_every=$(( steps / 10 > 0 ? steps / 10 : 1 ))
common=(--train.device=cuda --train.steps="$steps" --train.eval_every="$eval_every"
        --train.eval_batches=8 --train.save_every=0 --train.log_every=50
        --schedule.warmup_steps="$warmup" --schedule.decay_start="$warmup"
        --schedule.decay_end="$steps" --schedule.final_start=-1)

if [ "$bpe" -gt 0 ]; then
  tokenizer=$out/tokenizer-$bpe.json
  dataset=$out/gutenberg-$bpe
  if [ ! -f "$tokenizer" ]; then
    echo "== tokenizer-train: $bpe tokens on $train_text"
    "$frugal" data tokenizer-train "$train_text" --vocab-size "$bpe" --out "$tokenizer"
  fi
  if [ ! -d "$dataset" ]; then
    echo "== tokenize $train_text"
    "$frugal" data tokenize "$train_text" --tokenizer "$tokenizer" --out "$dataset"
  fi
  # The project's tokenizer puts BOS and EOS first (ids 0 and 1), as README's example trains.
  common+=(--data.train_path="$dataset" --data.tokenizer="$tokenizer" --data.val_fraction=0.02
           --model.vocab_size="$bpe" --model.bos_token_id=0 --model.eos_token_id=1)
  data_note="BPE $bpe on gutenberg train (2% of documents held out)"
else
  [ -f "$val_text" ] || die "$val_text not found (pass --data DIR)"
  common+=(--data.train_path="$train_text" --data.val_path="$val_text" --data.tokenizer=bytes)
  data_note="bytes, gutenberg train / val"
fi

for recipe in bf16 fp8; do
  run_dir=$out/$recipe
  rm -rf "$run_dir"
  echo "== $recipe: $preset, $steps steps, $data_note"
  start=$(date +%s)
  if ! "$frugal" train "$preset" "${common[@]}" --train.precision="$recipe" \
      --train.out_dir="$run_dir" "${extra[@]}" >"$out/$recipe.log" 2>&1; then
    tail -n 20 "$out/$recipe.log" >&2
    die "$recipe run failed (log: $out/$recipe.log)"
  fi
  grep -E "^(device|train.precision|done)" "$out/$recipe.log" || true
  grep -E "^(step|eval) " "$out/$recipe.log" | tail -n 4
  echo "   $recipe: $(( $(date +%s) - start )) s"
done

grep -h "train.precision = \"fp8\" needs" "$out/fp8.log" && echo "note: the fp8 run fell back to bf16"
python3 tools/loss_curves.py "$out/bf16/metrics.jsonl" "$out/fp8/metrics.jsonl" --labels bf16 fp8 \
  --png "$out/fp8_vs_bf16.png" --json "$out/fp8_vs_bf16.json"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/fp8_vs_bf16"
  cp "$out"/fp8_vs_bf16.png "$out"/fp8_vs_bf16.json "$out"/bf16.log "$out"/fp8.log "$OUT/fp8_vs_bf16/"
  cp "$out/bf16/metrics.jsonl" "$OUT/fp8_vs_bf16/bf16.metrics.jsonl"
  cp "$out/fp8/metrics.jsonl" "$OUT/fp8_vs_bf16/fp8.metrics.jsonl"
fi
