#!/usr/bin/env bash
# Hardware counters of the grouped expert GEMM kernels on the GPU machine, run from the repository
# root (carry .carry/gpu-deps): builds bench_grouped_gemm_cuda, then profiles the first launch of
# the FP8 kernel (gate/up Fprop) and of the BF16 kernel with ncu's full section set (clocks left
# alone), and prints the lines that say where the time goes: throughputs, the tensor pipe, the
# issue rate and the warp stall reasons. The reports (.ncu-rep), their text and their
# per-instruction source page (CSV) go to $OUT (or build-gpu/ncu).
#   scripts/ncu_grouped_gemm.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${FRUGAL_BUILD_DIR:-build-gpu}
out=${OUT:-$build/ncu}
mkdir -p "$out"
source scripts/configure_gpu_build.sh
configure_gpu_build "$build" "$out/configure.log" || { tail "$out/configure.log"; exit 1; }
ninja -C "$build" -j"$(nproc)" bench_grouped_gemm_cuda > "$out/build.log" 2>&1 \
  || { grep error "$out/build.log" | head; exit 1; }
for kernel in grouped_gemm_fp8_kernel grouped_gemm_kernel; do
  echo "== ncu --set full, first launch of $kernel"
  timeout 240 ncu --clock-control none --set full --import-source yes -o "$out/ncu_$kernel" -f \
    --kernel-name "regex:$kernel" --launch-count 1 \
    "$build/bench_grouped_gemm_cuda" /tmp/grouped.json --no-v3 > "$out/ncu_$kernel.run.log" 2>&1
  ncu --import "$out/ncu_$kernel.ncu-rep" > "$out/ncu_$kernel.log" 2>&1
  # Per-instruction counters (SASS with the source lines): where the stalls and the excessive
  # global sectors are.
  ncu --import "$out/ncu_$kernel.ncu-rep" --page source --csv --print-source sass \
    > "$out/ncu_${kernel}_source.csv" 2>&1
  grep -E "void .*$kernel|Duration|Throughput|Tensor|Issued Warp|Eligible Warps|Active Warps|Stall|stall|Registers Per|Achieved Occupancy|Warp Cycles Per Issued" \
    "$out/ncu_$kernel.log" | grep -vE "^ +(OPT|INF)" | head -n 45
done
