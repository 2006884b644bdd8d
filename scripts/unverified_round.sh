#!/usr/bin/env bash
# The GPU round for code that has compiled but not yet run on a GPU, run from the repository root
# (carry .carry/gpu-deps, and .carry/data for the training runs):
#   two-gpu (a machine with 2+ GPUs): test_parallel_gpu_ep_cuda (its bf16 bounds were widened after
#     the first run of ZeRO-1 under EP; the fp8 case runs the dispatched FP8 rows through the sm_90
#     grouped kernel) and bench-1b fp8 under EP 2 against one GPU (multi_gpu_round.sh part fp8ep);
#   one-gpu: the FP8 quantizer, SwiGLU, RMSNorm, AdamW and grouped GEMM kernel tests, the GB/s of
#     the work around the FP8 expert GEMMs (bench_fp8_ops_cuda), and the profiled bench-1b step
#     (FRUGAL_PROFILE=1 bench_train_gpu) in fp8 with the optimizer's fused and unfused FP8 refresh
#     (FRUGAL_FUSED_REFRESH=0), and in bf16: where the fp8 step's time goes.
#   scripts/unverified_round.sh [two-gpu|one-gpu]   (default both)
# UNVERIFIED_NCU=1 (one-gpu) adds the hardware counters of the FP8 grouped GEMM kernels (ncu).
# Logs go to build-gpu/unverified, or with $OUT set into $OUT/unverified.tgz (few files come back
# from the GPU machine). Exit status 0 only if every test passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${FRUGAL_BUILD_DIR:-build-gpu}
# Under $OUT the logs are written beside it and packed into it (save), so that one file comes back.
logs=${OUT:+/tmp/unverified}
logs=${logs:-$build/unverified}
mkdir -p "$logs"
failures=0
which=${1:-both}
# The logs so far, packed into $OUT (few files come back from the GPU machine, and a run cut short
# by its time limit still returns what is packed).
save() {
  [ -n "${OUT:-}" ] && tar czf "$OUT/unverified.tgz" -C "$(dirname "$logs")" "$(basename "$logs")"
}
data=.carry/data
[ -d "$data" ] || data=../shared/data

if [ "$which" != one-gpu ]; then
  echo "== two GPUs: the EP test, bench-1b fp8 under EP"
  MULTI_GPU_PARTS="tests fp8ep" MULTI_GPU_TESTS="test_parallel_gpu_ep_cuda" \
    timeout 450 scripts/multi_gpu_round.sh --ranks 2 --steps 4 --data "$data" \
    > "$logs/multi_gpu.log" 2>&1 || failures=$((failures + 1))
  grep -vE "^CHECK.*\| ok$|info$|SKIPPED" "$logs/multi_gpu.log" | tail -n 50
  save
fi

if [ "$which" != two-gpu ]; then
  source scripts/configure_gpu_build.sh
  if [ ! -f "$build/build.ninja" ]; then
    configure_gpu_build "$build" "$logs/configure.log" || { tail "$logs/configure.log"; exit 1; }
  fi
  echo "== one GPU: the grouped GEMM kernels, the quantizers, the profiled step"
  tests=(test_kernels_quant_cuda test_kernels_quant_dual_cuda test_kernels_swiglu_cuda
         test_kernels_swiglu_fp8_cuda test_kernels_rmsnorm_cuda test_kernels_adamw_fused_refresh_cuda
         test_kernels_grouped_gemm_sm90_cuda
         test_kernels_grouped_gemm_fp8_sm90_cuda test_model_gpu_transformer_cuda)
  ninja -C "$build" -j"$(nproc)" "${tests[@]}" bench_fp8_ops_cuda bench_train_gpu \
    > "$logs/build.log" 2>&1 || { grep -E "error" "$logs/build.log" | head -20; exit 1; }
  for t in "${tests[@]}"; do
    timeout 200 "$build/$t" > "$logs/$t.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failures=$((failures + 1))
    echo "$t: exit $rc"
    grep -E "FAILED|Failure|PASSED|^CHECK.*FAIL" "$logs/$t.log" | sed 's/\x1b\[[0-9;]*m//g' | head -12
    save
  done
  echo "== bench_fp8_ops_cuda"
  timeout 120 "$build/bench_fp8_ops_cuda" "$logs/fp8_ops.json" > "$logs/fp8_ops.log" 2>&1 \
    || failures=$((failures + 1))
  cat "$logs/fp8_ops.log"
  save
  if [ -n "${UNVERIFIED_NCU:-}" ] && command -v ncu > /dev/null; then
    # Hardware counters of the FP8 grouped kernel (its first launch, gate/up Fprop, after the
    # BF16 rows): what holds it near the BF16 kernels' rate.
    ninja -C "$build" -j"$(nproc)" bench_grouped_gemm_cuda >> "$logs/build.log" 2>&1
    echo "== ncu: grouped_gemm_fp8_kernel (bench_grouped_gemm_cuda --no-v3)"
    timeout 300 ncu --clock-control none --kernel-name regex:grouped_gemm_fp8_kernel \
      --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section SchedulerStats --section Occupancy \
      "$build/bench_grouped_gemm_cuda" /tmp/grouped.json --no-v3 > "$logs/ncu_fp8_grouped.log" 2>&1
    grep -E "fp8_kernel|Throughput|Duration|Stall|Issued Warp|Eligible|L2 Hit|Mem Busy|Bandwidth" \
      "$logs/ncu_fp8_grouped.log" | head -n 60
    save
  fi
  for run in "fp8 1" "fp8 0" "bf16 1"; do
    set -- $run
    echo "== FRUGAL_PROFILE=1 bench_train_gpu bench-1b $1 (FRUGAL_FUSED_REFRESH=$2)"
    FRUGAL_PROFILE=1 FRUGAL_FUSED_REFRESH=$2 timeout 150 \
      "$build/bench_train_gpu" configs/bench-1b.toml "$1" 8 4096 4 --warmup 2 \
      > "$logs/profile_$1_fused$2.log" 2>&1
    grep -A4 "^recipe" "$logs/profile_$1_fused$2.log"
    grep -E "^(layers|attn|moe|optimizer|mtp|head|norm)" "$logs/profile_$1_fused$2.log" | head -30
    save
  done
fi
echo "unverified_round: $failures failing part(s)"
save && [ -n "${OUT:-}" ] && rm -rf "$logs"
[ "$failures" -eq 0 ]
