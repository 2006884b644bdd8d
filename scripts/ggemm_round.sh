#!/usr/bin/env bash
# One GPU round for the grouped Hopper GEMMs, run ON THE GPU MACHINE from /work/main's root copy
# (the worktree at .wt/ggemm): configure like scripts/gpu_round.sh, build only
# test_kernels_grouped_gemm_sm90_cuda and bench_grouped_gemm_cuda, run both with time limits, and
# leave the logs in $OUT/ggemm_logs.tar.gz.  GGEMM_BENCH_ARGS: extra bench arguments.
set -uo pipefail
cd .wt/ggemm || exit 1
ln -sfn ../../.carry .carry
deps=$PWD/.carry/gpu-deps
multiarch=x86_64-linux-gnu
logs=${OUT:-/tmp}/ggemm_logs
mkdir -p "$logs"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee "$logs/machine.log"
mkdir -p "$deps/lib"
for lib in pcre2-8 xxhash; do
  for dir in /usr/lib/$multiarch /lib/$multiarch /usr/lib64 /usr/lib; do
    [ -e "$dir/lib$lib.so.0" ] && { ln -sfn "$dir/lib$lib.so.0" "$deps/lib/lib$lib.so"; break; }
  done
done
export PKG_CONFIG_PATH="$deps/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
for dir in /usr/lib/$multiarch/openblas-openmp/pkgconfig /usr/lib/$multiarch/openblas-pthread/pkgconfig; do
  [ -d "$dir" ] && PKG_CONFIG_PATH="$PKG_CONFIG_PATH:$dir"
done
build=build-ggemm-gpu
start=$(date +%s)
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA=ON \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DFRUGAL_EXTRA_INCLUDE="$deps/include" \
  > "$logs/configure.log" 2>&1 || { tail -20 "$logs/configure.log"; exit 1; }
cmake --build $build -j "$(nproc)" --target test_kernels_grouped_gemm_sm90_cuda bench_grouped_gemm_cuda \
  > "$logs/build.log" 2>&1
rc=$?
grep -E "error" "$logs/build.log" | head -20
echo "build: exit $rc in $(( $(date +%s) - start )) s"
[ $rc -eq 0 ] || { tar -C "$logs/.." -czf "$OUT/ggemm_logs.tar.gz" ggemm_logs; exit 1; }
# Variants (FRUGAL_GROUPED_GEMM_SCHEDULE, FRUGAL_GROUPED_GEMM_EPILOGUE): tests, then timings.
variants=${GGEMM_VARIANTS:-default direct multicast pingpong narrow}
run_variant() {  # name, command...
  local name=$1; shift
  case $name in
    default) env "$@" ;;
    direct) FRUGAL_GROUPED_GEMM_EPILOGUE=direct "$@" ;;
    *) FRUGAL_GROUPED_GEMM_SCHEDULE=$name "$@" ;;
  esac
}
for variant in $variants; do
  run_variant "$variant" timeout ${GGEMM_TEST_TIMEOUT:-120} $build/test_kernels_grouped_gemm_sm90_cuda \
    > "$logs/test_$variant.log" 2>&1
  echo "test ($variant) exit: $?"
  grep -E "FAIL|PASSED|FAILED" "$logs/test_$variant.log" | head -40
done
for variant in ${GGEMM_BENCH_VARIANTS:-default direct narrow}; do
  args=""
  [ "$variant" != default ] && args="--no-v3"
  echo "== bench ($variant)"
  run_variant "$variant" timeout ${GGEMM_BENCH_TIMEOUT:-150} $build/bench_grouped_gemm_cuda \
    "$logs/bench_$variant.json" $args 2>&1 | tee "$logs/bench_$variant.log"
  echo "bench ($variant) exit: ${PIPESTATUS[0]}"
done
tar -C "$logs/.." -czf "$OUT/ggemm_logs.tar.gz" ggemm_logs
