#!/usr/bin/env bash
# One GPU round, run ON THE GPU MACHINE from the repository root: configure and build for sm_90a
# with all cores, run the CUDA tests (ctest -L cuda), then the op timings, and print a short table.
#
#   scripts/gpu_round.sh               build everything (checks that the whole tree builds there)
#   scripts/gpu_round.sh --cuda-only   build only the CUDA test programs (and what they need)
# FRUGAL_SKIP_BENCH=1 skips the benchmarks, FRUGAL_SKIP_TIMING=1 the second (timing) pass over
# the test programs, FRUGAL_CTEST_REGEX=RE runs only the CUDA tests whose name matches RE.
#
# Needs .carry/gpu-deps (made here by scripts/carry_gpu_deps.sh and carried with the run): the GPU
# machine lacks the headers of toml++, PCRE2 and xxhash and the .so links / .pc files of the last
# two. Builds into build-gpu/ (kept between calls on the same machine, so a second round is
# incremental). Logs and the summary also go to $OUT when it is set.
# Exit status: 0 only if configure, build, every CUDA test and the timing run succeeded.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

build_dir=${FRUGAL_BUILD_DIR:-build-gpu}
deps=$PWD/.carry/gpu-deps
multiarch=x86_64-linux-gnu
out_dir=${OUT:-$build_dir/round}
mkdir -p "$build_dir" "$out_dir"
rm -f "$out_dir/timing.log"
targets=()
[ "${1:-}" = "--cuda-only" ] && cuda_only=1 || cuda_only=0

section() { printf '\n==== %s ====\n' "$*"; }
die() { echo "gpu_round: $*" >&2; exit 1; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.memory --format=csv \
  || echo "gpu_round: nvidia-smi failed"
/usr/local/cuda/bin/nvcc --version | tail -1
cmake --version | head -1
g++ --version | head -1
echo "cores: $(nproc)"

section "carried dependencies"
[ -f "$deps/include/toml++/toml.h" ] && [ -f "$deps/include/pcre2.h" ] && [ -f "$deps/include/xxhash.h" ] \
  || die "$deps is missing or incomplete: run scripts/carry_gpu_deps.sh on the development machine and carry .carry/gpu-deps"
# The carry may drop or dereference links: make the development links here, to this machine's
# runtime libraries.
mkdir -p "$deps/lib"
for lib in pcre2-8 xxhash; do
  runtime=""
  for dir in /usr/lib/$multiarch /lib/$multiarch /usr/lib64 /usr/lib; do
    [ -e "$dir/lib$lib.so.0" ] && { runtime=$dir/lib$lib.so.0; break; }
  done
  [ -n "$runtime" ] || die "lib$lib.so.0 not found on this machine"
  ln -sfn "$runtime" "$deps/lib/lib$lib.so"
  echo "lib$lib.so -> $runtime"
done
export PKG_CONFIG_PATH="$deps/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# OpenBLAS: CMake prefers the OpenMP build (openblas-openmp/libopenblas.so), else pkg-config openblas;
# add the per-variant pkgconfig folders Ubuntu keeps beside each build, in case the generic one is absent.
ls -d /usr/lib/$multiarch/openblas-* 2>/dev/null | sed 's/^/openblas variant: /'
for dir in /usr/lib/$multiarch/openblas-openmp/pkgconfig /usr/lib/$multiarch/openblas-pthread/pkgconfig; do
  [ -d "$dir" ] && PKG_CONFIG_PATH="$PKG_CONFIG_PATH:$dir"
done
pkg-config --modversion libpcre2-8 libxxhash libzstd 2>&1 | paste -sd' ' | sed 's/^/pkg-config pcre2 xxhash zstd: /'

section "configure"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA=ON \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DFRUGAL_EXTRA_INCLUDE="$deps/include" \
  2>&1 | tee "$out_dir/configure.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || die "configure failed (log: $out_dir/configure.log)"
grep -q "frugal: CUDA backend on" "$out_dir/configure.log" || die "configure did not enable CUDA"

section "build"
if [ "$cuda_only" = 1 ]; then
  mapfile -t targets < <(find tests -name 'test_*_cuda.cc' | sed -E 's|^tests/||; s|\.cc$||' |
    awk -F/ '{ n = $NF; if (NF > 1) { area = $1; for (i = 2; i < NF; ++i) area = area "_" $i;
               sub(/^test_/, "test_" area "_", n) } print n }')
  mapfile -t benches < <(find bench -name 'bench_*_cuda.cc' -o -name 'bench_train_gpu.cc' | sed -E 's|^bench/||; s|\.cc$||')
  targets+=(frugal "${benches[@]}")
  echo "targets: ${targets[*]}"
fi
start=$(date +%s)
build_args=(--build "$build_dir" -j "$(nproc)")
[ "${#targets[@]}" -gt 0 ] && build_args+=(--target "${targets[@]}")
cmake "${build_args[@]}" > "$out_dir/build.log" 2>&1
build_rc=$?
grep -E "warning|error" "$out_dir/build.log" | head -40
tail -3 "$out_dir/build.log"
echo "build: exit $build_rc in $(( $(date +%s) - start )) s"
[ "$build_rc" -eq 0 ] || die "build failed (log: $out_dir/build.log)"

section "ctest -L cuda"
ctest_filter=()
[ -n "${FRUGAL_CTEST_REGEX:-}" ] && ctest_filter=(-R "$FRUGAL_CTEST_REGEX")
ctest --test-dir "$build_dir" -L cuda "${ctest_filter[@]}" --output-on-failure --timeout 600 2>&1 \
  | tee "$out_dir/ctest.log"
ctest_rc=${PIPESTATUS[0]}

section "checks and timing (FRUGAL_CUDA_TIMING=1)"
timing_rc=0
for program in "$build_dir"/test_*_cuda; do
  [ -x "$program" ] || continue
  [ "${FRUGAL_SKIP_TIMING:-0}" = 1 ] && break  # ctest only (a shorter round)
  FRUGAL_CUDA_TIMING=1 "$program" 2>&1 | tee -a "$out_dir/timing.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || timing_rc=1
done

section "benchmarks (bench/*_cuda and the GPU training step)"
bench_rc=0
if [ "${FRUGAL_SKIP_BENCH:-0}" != 1 ]; then
  for program in "$build_dir"/bench_*_cuda; do
    [ -x "$program" ] || continue
    name=$(basename "$program")
    timeout 300 "$program" "$out_dir/$name.json" 2>&1 | tee "$out_dir/$name.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || bench_rc=1
  done
  # Reference systems measured in the same run (PyTorch/transformers on this machine).
  if [ "${FRUGAL_TORCH:-0}" = 1 ]; then
    for script in tools/bench_sdpa_torch.py; do
      [ -f "$script" ] && timeout 300 python3 "$script" 2>&1 | tee "$out_dir/$(basename "$script" .py).log"
    done
  fi
fi

section "summary"
{
  echo "per-op checks (CUDA vs CPU reference; fp32: max |gpu-cpu| / max |cpu| <= 1e-5; fp8: bit-identical)"
  grep -h '^CHECK |' "$out_dir/timing.log" | awk -F'|' '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    { op = trim($2); status = trim($NF)
      if (status != "ok" && status != "FAIL") next  # summary lines carry no verdict
      if (!(op in checks)) order[++ops] = op
      checks[op]++; if (status != "ok") failed[op]++
      for (i = 3; i < NF; ++i) {
        field = trim($i)
        if (field ~ /^max rel err/ || field ~ /^rel /) { n = split(field, w, " "); e = w[n] + 0
          if (field ~ /\(tol/) e = w[2] + 0
          if (e > worst[op]) worst[op] = e; has[op] = 1 } } }
    END { printf "  %-32s %7s %7s  %s\n", "op", "checks", "failed", "worst rel err"
          for (i = 1; i <= ops; ++i) { op = order[i]
            printf "  %-32s %7d %7d  %s\n", op, checks[op], failed[op] + 0,
                   (has[op] ? sprintf("%.2e", worst[op]) : "exact") } }'
  echo
  echo "timings (median; GB/s over the bytes each op must move):"
  grep -h '^TIMING |' "$out_dir/timing.log" | sed 's/^TIMING | /  /'
  echo
  echo "ctest -L cuda: $(grep -E 'tests passed|tests failed' "$out_dir/ctest.log" | tail -1) (exit $ctest_rc)"
  echo "timing run exit: $timing_rc"
  echo "benchmarks exit: $bench_rc"
} | tee "$out_dir/summary.txt"

[ "$ctest_rc" -eq 0 ] && [ "$timing_rc" -eq 0 ]
