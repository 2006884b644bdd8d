#!/usr/bin/env bash
# Kernel-by-kernel time of one bench-1b training step on the GPU machine, run from the repository
# root (carry .carry/gpu-deps): ncu times every kernel of the timed step (bench_train_gpu brackets
# its timed steps with cudaProfilerStart/Stop; clocks and caches left alone), and tools/kernel_census.py adds
# the launches up per kernel name. Per recipe, the raw CSV and the table go to $OUT (or
# build-gpu/census).
#   scripts/step_census.sh [RECIPE ...]     (default: bf16 fp8)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${FRUGAL_BUILD_DIR:-build-gpu}
out=${OUT:-$build/census}
mkdir -p "$out"
source scripts/configure_gpu_build.sh
if [ ! -f "$build/build.ninja" ]; then
  configure_gpu_build "$build" "$out/configure.log" || { tail "$out/configure.log"; exit 1; }
fi
ninja -C "$build" -j"$(nproc)" bench_train_gpu > "$out/build.log" 2>&1 \
  || { grep error "$out/build.log" | head; exit 1; }
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(bf16 fp8)
for recipe in "${recipes[@]}"; do
  echo "== census: bench-1b $recipe, batch 8 x 4096, one timed step after one warm-up"
  timeout 280 ncu --clock-control none --cache-control none --profile-from-start off --metrics gpu__time_duration.sum \
    --csv --page raw "$build/bench_train_gpu" configs/bench-1b.toml "$recipe" 8 4096 1 --warmup 1 \
    > "$out/census_$recipe.csv" 2> "$out/census_$recipe.err"
  python3 tools/kernel_census.py "$out/census_$recipe.csv" --top 45 | tee "$out/census_$recipe.txt"
done
