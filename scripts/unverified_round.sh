#!/usr/bin/env bash
# The GPU round for code that has compiled but not yet run on a GPU, run ON A MACHINE WITH 2+ GPUS
# from the repository root (carry .carry/gpu-deps, and .carry/data for the training parts):
#   1. one GPU: the fused AdamW refresh (kernel test, the bit-for-bit training test, and the tests
#      of the quantizer and the multi-tensor AdamW it shares code with), then bench_train_gpu on
#      bench-1b in bf16 and fp8 with the fused refresh off and on;
#   2. two GPUs: the GPU pipeline test (incl. the timing cases) and the EP test (incl. the revised
#      fp8-under-EP comparison), then bench_pipeline_gpu with its bubble table
#      (scripts/multi_gpu_round.sh parts "tests pipeline").
#   scripts/unverified_round.sh [two-gpu|one-gpu]   (default both; each fits one 10-minute call)
# Logs go to $OUT (or build-gpu/unverified); few files come back from the GPU machine, so they are
# packed into one archive at the end. Exit status 0 only if every test passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${FRUGAL_BUILD_DIR:-build-gpu}
logs=${OUT:+$OUT/unverified}
logs=${logs:-$build/unverified}
mkdir -p "$logs"
failures=0
which=${1:-both}

if [ "$which" != one-gpu ]; then
echo "== two GPUs: pipeline and EP tests, pipeline bench"
MULTI_GPU_PARTS="tests pipeline" \
  MULTI_GPU_TESTS="test_parallel_gpu_pipeline_cuda test_parallel_gpu_ep_cuda" \
  timeout 480 scripts/multi_gpu_round.sh --ranks 2 --steps 4 > "$logs/multi_gpu.log" 2>&1 \
  || failures=$((failures + 1))
grep -vE "^CHECK.*\| ok$|info$" "$logs/multi_gpu.log" | tail -n 60
fi

if [ "$which" != two-gpu ]; then
# A fresh machine: configure (and build the multi-GPU targets) through multi_gpu_round.sh first.
[ -f "$build/build.ninja" ] || MULTI_GPU_PARTS=none scripts/multi_gpu_round.sh --ranks 1 \
  > "$logs/configure.log" 2>&1

echo "== one GPU: the fused refresh"
tests=(test_kernels_adamw_fused_refresh_cuda test_train_gpu_train_cuda test_kernels_quant_cuda
       test_kernels_adamw_multi_cuda)
ninja -C "$build" -j"$(nproc)" "${tests[@]}" bench_train_gpu > "$logs/build.log" 2>&1 \
  || { grep -E "error" "$logs/build.log" | head -20; exit 1; }
for t in "${tests[@]}"; do
  timeout 300 "$build/$t" > "$logs/$t.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failures=$((failures + 1))
  echo "$t: exit $rc"
  grep -E "FAILED|Failure|PASSED" "$logs/$t.log" | sed 's/\x1b\[[0-9;]*m//g' | head -12
done
for recipe in bf16 fp8; do
  for fused in 0 1; do
    echo "== bench_train_gpu bench-1b $recipe, FRUGAL_FUSED_REFRESH=$fused"
    FRUGAL_FUSED_REFRESH=$fused timeout 300 "$build/bench_train_gpu" configs/bench-1b.toml "$recipe" \
      8 4096 4 --warmup 2 > "$logs/bench_train_${recipe}_fused$fused.log" 2>&1
    tail -n 4 "$logs/bench_train_${recipe}_fused$fused.log"
  done
done
fi
echo "unverified_round: $failures failing part(s)"
[ -n "${OUT:-}" ] && tar czf "$OUT/unverified.tgz" -C "$(dirname "$logs")" "$(basename "$logs")" \
  && rm -rf "$logs"
[ "$failures" -eq 0 ]
