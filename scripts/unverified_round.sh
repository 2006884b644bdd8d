#!/usr/bin/env bash
# The GPU round for code that has compiled but not yet run on a GPU, run from the repository root
# (carry .carry/gpu-deps, and .carry/data for the training runs):
#   two-gpu (a machine with 2+ GPUs): ZeRO-1 under expert parallelism (test_parallel_gpu_ep_cuda,
#     then bench-1b EP 2 with train.gpu_zero1 on and off) and the cost-balanced stage split
#     (test_parallel_gpu_pipeline_cuda, bench_pipeline_gpu with the automatic split, and DualPipeV
#     with an explicit 3,4,3,2 split against it) through scripts/multi_gpu_round.sh;
#   one-gpu: the grouped BF16 and FP8 GEMM kernels on Hopper (their tests and benchmark against
#     cuBLASLt), the GPU model tests that run them, and bench_train_gpu on bench-1b in bf16 and
#     fp8 with the new kernels and with the cuBLASLt calls (FRUGAL_GROUPED_GEMM[_FP8]=cublas), and
#     transformers (tools/bench_hf_train.py) in the same call.
#   scripts/unverified_round.sh [two-gpu|one-gpu]   (default both)
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
  echo "== two GPUs: EP and pipeline tests, ZeRO-1 under EP, the stage split"
  MULTI_GPU_PARTS="tests zero1 pipeline" MULTI_GPU_ZERO1_EPS=2 \
    MULTI_GPU_TESTS="test_parallel_gpu_ep_cuda test_parallel_gpu_pipeline_cuda" \
    timeout 450 scripts/multi_gpu_round.sh --ranks 2 --steps 4 --data "$data" \
    > "$logs/multi_gpu.log" 2>&1 || failures=$((failures + 1))
  grep -vE "^CHECK.*\| ok$|info$|SKIPPED" "$logs/multi_gpu.log" | tail -n 70
  echo "== bench_pipeline_gpu bench-1b bf16 dualpipev, explicit split 3,4,3,2 (np 2)"
  timeout 200 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE=0 "$build/bench_pipeline_gpu" \
    configs/bench-1b.toml bf16 dualpipev 8 4 4096 4 --skip-single --train.pp_stage_layers=3,4,3,2 \
    > "$logs/bench_pipeline_dualpipev_3432.log" 2>&1 || failures=$((failures + 1))
  sed -n '/split\|layers/p; / micro-batches of /,$p' "$logs/bench_pipeline_dualpipev_3432.log" | head -n 30
fi

if [ "$which" != two-gpu ]; then
  deps=$PWD/.carry/gpu-deps
  if [ ! -f "$build/build.ninja" ]; then
    for lib in pcre2-8 xxhash; do ln -sfn "/usr/lib/x86_64-linux-gnu/lib$lib.so.0" "$deps/lib/lib$lib.so"; done
    PKG_CONFIG_PATH="$deps/pkgconfig" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DFRUGAL_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
      -DFRUGAL_EXTRA_INCLUDE="$deps/include" > "$logs/configure.log" 2>&1 \
      || { tail "$logs/configure.log"; exit 1; }
  fi
  echo "== one GPU: the grouped GEMM kernels and the model on them"
  tests=(test_kernels_grouped_gemm_sm90_cuda test_kernels_grouped_gemm_fp8_sm90_cuda
         test_model_gpu_transformer_cuda test_model_gpu_pipeline_stage_cuda)
  ninja -C "$build" -j"$(nproc)" "${tests[@]}" bench_grouped_gemm_cuda bench_train_gpu \
    > "$logs/build.log" 2>&1 || { grep -E "error" "$logs/build.log" | head -20; exit 1; }
  for t in "${tests[@]}"; do
    timeout 200 "$build/$t" > "$logs/$t.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failures=$((failures + 1))
    echo "$t: exit $rc"
    grep -E "FAILED|Failure|PASSED|^CHECK.*FAIL" "$logs/$t.log" | sed 's/\x1b\[[0-9;]*m//g' | head -12
    save
  done
  grep -hE "^CHECK" "$logs"/test_kernels_grouped_gemm_*.log | head -40
  # bench-1b steps: the grouped GEMMs as the sm_90 kernels (default) and as cuBLASLt calls.
  for run in "bf16 sm90" "bf16 cublas" "fp8 sm90" "fp8 cublas"; do
    set -- $run
    echo "== bench_train_gpu bench-1b $1 (grouped GEMMs: $2)"
    FRUGAL_GROUPED_GEMM=$2 FRUGAL_GROUPED_GEMM_FP8=$2 timeout 150 "$build/bench_train_gpu" \
      configs/bench-1b.toml "$1" 8 4096 4 --warmup 2 > "$logs/bench_train_$1_$2.log" 2>&1
    tail -n 4 "$logs/bench_train_$1_$2.log"
    save
  done
  echo "== transformers, bench-1b bf16, same shape"
  timeout 150 python3 tools/bench_hf_train.py --config configs/bench-1b.toml --steps 5 --warmup 2 \
    > "$logs/bench_hf_train.log" 2>&1
  tail -n 4 "$logs/bench_hf_train.log"
  save
  echo "== bench_grouped_gemm_cuda"
  timeout 120 "$build/bench_grouped_gemm_cuda" "$logs/bench_grouped_gemm.json" --no-v3 2>&1 \
    | tee "$logs/bench_grouped_gemm.log" | tail -n 30
fi
echo "unverified_round: $failures failing part(s)"
save && [ -n "${OUT:-}" ] && rm -rf "$logs"
[ "$failures" -eq 0 ]
