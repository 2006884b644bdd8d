#!/usr/bin/env bash
# Multi-GPU round, run ON A MACHINE WITH 2+ GPUS from the repository root: builds the NCCL tests,
# the GPU data-parallel tests and the dispatch benchmark, runs them under mpirun (one GPU per
# rank, NCCL_NVLS_ENABLE=0), then trains bench-1b for a few steps on 1 GPU and on N GPUs (data
# parallel, then expert parallel) with the same global batch and prints the step lines (tokens/s);
# the expert-parallel run again with the overlap measurement (FRUGAL_OVERLAP_STATS=1), with the
# all-to-all overlap on and off (FRUGAL_EP_OVERLAP=0), printing the "overlap" lines too; then the
# GPU pipeline benchmark (bench_pipeline_gpu: bf16, DualPipeV and 1F1B, 8 micro-batches of
# 4 x 4096, 4 steps, against one GPU), printing the step table and the measured bubble per rank
# next to the schedule's expected one (simulated and Table 2, with the measured F and B).
# MULTI_GPU_PARTS (default "tests dispatch train zero1 fp8ep overlap pipeline") picks the parts,
# MULTI_GPU_SCHEDULES (default "dualpipev 1f1b") the pipeline part's schedules,
# MULTI_GPU_TESTS (names separated by spaces) the test programs, MULTI_GPU_ZERO1_EPS the ep
# values of the zero1 part (default "1 N"). The part "mesh" (not in the
# default; --ranks 4 or 8) trains bench-1b on the GPU pipeline over a mesh: pp 2 (DualPipeV) x
# dp ranks/2 with ep 2 inside dp, 4 micro-batches of 2 x 4096 per pipeline, with the step timing
# (FRUGAL_PIPELINE_TIMING=1), and prints the step and bubble lines.
#
#   scripts/multi_gpu_round.sh [--ranks N] [--data DIR] [--steps S]
#
# Needs .carry/gpu-deps like scripts/gpu_round.sh (run that first on a fresh machine, or this
# script configures build-gpu itself). Logs go to $OUT/multi_gpu when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ranks=2
data=../shared/data
steps=6
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) ranks=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "multi_gpu_round: unknown argument $1" >&2; exit 2 ;;
  esac
done
build=${FRUGAL_BUILD_DIR:-build-gpu}
logs=${OUT:+$OUT/multi_gpu}
logs=${logs:-$build/multi_gpu}
mkdir -p "$logs"
export NCCL_NVLS_ENABLE=0
source scripts/configure_gpu_build.sh
configure_gpu_build "$build" "$logs/configure.log" || { tail "$logs/configure.log"; exit 1; }
ninja -C "$build" -j"$(nproc)" frugal test_parallel_nccl_cuda test_parallel_gpu_dp_cuda \
  test_parallel_gpu_ep_cuda test_parallel_gpu_ep_overlap_cuda test_parallel_gpu_dispatch_cuda \
  test_parallel_gpu_pipeline_cuda test_model_gpu_pipeline_stage_cuda bench_dispatch_cuda \
  bench_pipeline_gpu bench_train_gpu > "$logs/build.log" 2>&1 \
  || { grep -E "error" "$logs/build.log" | head -30; exit 1; }
mpi=(mpirun --allow-run-as-root --oversubscribe -np "$ranks" -x NCCL_NVLS_ENABLE=0
     -x OMP_NUM_THREADS=4)
failures=0
parts=" ${MULTI_GPU_PARTS:-tests dispatch train zero1 fp8ep overlap pipeline} "
part() { [[ "$parts" == *" $1 "* ]]; }
tests=(test_parallel_nccl_cuda test_parallel_gpu_dp_cuda test_parallel_gpu_ep_cuda
       test_parallel_gpu_ep_overlap_cuda test_parallel_gpu_dispatch_cuda test_parallel_gpu_pipeline_cuda)
[ -n "${MULTI_GPU_TESTS:-}" ] && read -r -a tests <<< "$MULTI_GPU_TESTS"
for t in "${tests[@]}"; do
  part tests || continue
  timeout 300 "${mpi[@]}" "$build/$t" > "$logs/$t.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failures=$((failures + 1))
  echo "== $t (np $ranks): exit $rc"
  grep -E "^CHECK|FAILED|PASSED|SKIPPED" "$logs/$t.log" | sort -u | head -40
done
if part dispatch; then
  echo "== bench_dispatch_cuda (np $ranks)"
  timeout 300 "${mpi[@]}" "$build/bench_dispatch_cuda" "$logs/bench_dispatch.json" 2>&1 \
    | tee "$logs/bench_dispatch.log" | tail -25
fi

train_text=$data/gutenberg_en_train.txt.zst
if [ -f "$train_text" ]; then
  common=(configs/bench-1b.toml --train.device=cuda --train.precision=bf16 --train.steps="$steps"
          --train.eval_every=0 --train.save_every=0 --train.log_every=1 --train.micro_batch=8
          --train.batch_sequences=$((8 * ranks)) --data.train_path="$train_text"
          --data.val_path="$data/gutenberg_en_val.txt.zst" --data.tokenizer=bytes)
  if part train; then
    echo "== bench-1b, bf16, global batch $((8 * ranks)) x 4096: 1 GPU"
    rm -rf /tmp/mg1 /tmp/mgN /tmp/mgE
    timeout 400 "$build/frugal" train "${common[@]}" --train.out_dir=/tmp/mg1 \
      > "$logs/train_1gpu.log" 2>&1
    grep -E "^step" "$logs/train_1gpu.log" | tail -n 3
    echo "== bench-1b, bf16, same global batch: $ranks GPUs (data parallel)"
    timeout 400 "${mpi[@]}" "$build/frugal" train "${common[@]}" --train.out_dir=/tmp/mgN \
      > "$logs/train_${ranks}gpu.log" 2>&1
    grep -E "^(mesh|device)|^step|rror" "$logs/train_${ranks}gpu.log" | tail -n 6
    echo "== bench-1b, bf16, same global batch: $ranks GPUs (expert parallel, ep $ranks)"
    timeout 400 "${mpi[@]}" "$build/frugal" train "${common[@]}" --train.ep="$ranks" \
      --train.out_dir=/tmp/mgE > "$logs/train_${ranks}gpu_ep.log" 2>&1
    grep -E "^(mesh|device)|^step|rror" "$logs/train_${ranks}gpu_ep.log" | tail -n 6
  fi
  # ZeRO-1 (the default) against the all-reduce path with a full optimizer copy per rank, data
  # parallel alone (ep 1) and with expert parallelism inside it (ep = ranks: ZeRO-1 shards all but
  # the routed experts).
  for zero1 in true false; do
    part zero1 || continue
    for ep in ${MULTI_GPU_ZERO1_EPS:-1 $ranks}; do
      echo "== bench-1b, bf16, same global batch: $ranks GPUs (data parallel, ep $ep, train.gpu_zero1=$zero1)"
      rm -rf /tmp/mgZ
      timeout 400 "${mpi[@]}" "$build/frugal" train "${common[@]}" --train.gpu_zero1="$zero1" \
        --train.ep="$ep" --train.out_dir=/tmp/mgZ > "$logs/train_${ranks}gpu_ep${ep}_zero1_$zero1.log" 2>&1
      grep -E "^(mesh|device)|^step|rror" "$logs/train_${ranks}gpu_ep${ep}_zero1_$zero1.log" | tail -n 6
    done
  done
  # The fp8 recipe under expert parallelism (FP8 dispatch payload), and on one GPU.
  if part fp8ep; then
    fp8=("${common[@]/--train.precision=bf16/--train.precision=fp8}")
    echo "== bench-1b, fp8, global batch $((8 * ranks)) x 4096: 1 GPU"
    rm -rf /tmp/mgF1 /tmp/mgFE
    timeout 400 "$build/frugal" train "${fp8[@]}" --train.out_dir=/tmp/mgF1 \
      > "$logs/train_1gpu_fp8.log" 2>&1
    grep -E "^step|rror" "$logs/train_1gpu_fp8.log" | tail -n 4
    echo "== bench-1b, fp8, same global batch: $ranks GPUs (expert parallel, ep $ranks)"
    timeout 400 "${mpi[@]}" "$build/frugal" train "${fp8[@]}" --train.ep="$ranks" \
      --train.out_dir=/tmp/mgFE > "$logs/train_${ranks}gpu_ep_fp8.log" 2>&1
    grep -E "^(mesh|device)|^step|rror" "$logs/train_${ranks}gpu_ep_fp8.log" | tail -n 6
  fi
  # The EP all-to-alls beside the computation (gpu_expert_dispatch.h): tokens/s and the measured
  # fraction of all-to-all time hidden under the compute stream's work, overlap on, then off.
  for mode in on off; do
    part overlap || continue
    overlap_env=(-x FRUGAL_OVERLAP_STATS=1)
    [ "$mode" = off ] && overlap_env+=(-x FRUGAL_EP_OVERLAP=0)
    echo "== bench-1b, bf16, same global batch: $ranks GPUs (expert parallel, ep $ranks), overlap $mode"
    rm -rf /tmp/mgO
    timeout 400 "${mpi[@]}" "${overlap_env[@]}" "$build/frugal" train "${common[@]}" \
      --train.ep="$ranks" --train.out_dir=/tmp/mgO > "$logs/train_${ranks}gpu_ep_overlap_$mode.log" 2>&1
    grep -E "^step|^overlap|rror" "$logs/train_${ranks}gpu_ep_overlap_$mode.log" | tail -n 8
  done
fi
# The GPU pipeline on bench-1b (random tokens, no data needed): one GPU, then the pipeline; the
# step table, then the measured bubble per step and rank.
for schedule in ${MULTI_GPU_SCHEDULES:-dualpipev 1f1b}; do
  part pipeline || continue
  echo "== bench_pipeline_gpu bench-1b bf16 $schedule, 8 micro-batches of 4 x 4096 (np $ranks)"
  timeout 500 "${mpi[@]}" "$build/bench_pipeline_gpu" configs/bench-1b.toml bf16 "$schedule" 8 4 \
    4096 4 --json "$logs/bench_pipeline_$schedule.json" > "$logs/bench_pipeline_$schedule.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failures=$((failures + 1))
  echo "exit $rc"
  if grep -q "micro-batches of" "$logs/bench_pipeline_$schedule.log"; then
    sed -n '/ micro-batches of /,$p' "$logs/bench_pipeline_$schedule.log" | head -n 60
  else
    tail -n 12 "$logs/bench_pipeline_$schedule.log"
  fi
done
# The GPU pipeline over a mesh (4 or 8 ranks): pp 2 x dp ranks/2, ep 2 inside dp, DualPipeV.
if part mesh; then
  if [ "$ranks" -lt 4 ] || [ $((ranks % 4)) -ne 0 ]; then
    echo "== mesh: skipped (needs --ranks 4 or 8: pp 2 x dp >= 2 with ep 2; this round has $ranks)"
  elif [ ! -f "$train_text" ]; then
    echo "== mesh: skipped (no training text at $train_text)"
  else
    dp=$((ranks / 2))
    echo "== bench-1b, bf16, GPU pipeline dualpipev pp 2 x dp $dp (ep 2): 4 micro-batches of 2 x 4096 per pipeline"
    rm -rf /tmp/mgM
    timeout 500 "${mpi[@]}" -x FRUGAL_PIPELINE_TIMING=1 "$build/frugal" train \
      configs/bench-1b.toml --train.device=cuda --train.precision=bf16 --train.pp=2 \
      --train.pp_schedule=dualpipev --train.ep=2 --train.micro_batch=2 \
      --train.batch_sequences=$((2 * 4 * dp)) --train.steps="$steps" --train.eval_every=0 \
      --train.save_every=0 --train.log_every=1 --data.train_path="$train_text" \
      --data.val_path="$data/gutenberg_en_val.txt.zst" --data.tokenizer=bytes \
      --train.out_dir=/tmp/mgM > "$logs/train_${ranks}gpu_pipeline_mesh.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failures=$((failures + 1))
    echo "exit $rc"
    grep -E "^(mesh|device)|^step|rror" "$logs/train_${ranks}gpu_pipeline_mesh.log" | tail -n 8
    grep -E "^pipeline timing" "$logs/train_${ranks}gpu_pipeline_mesh.log" | tail -n 4
  fi
fi
echo "multi_gpu_round: $failures test program(s) failed"
# Few files come back from the GPU machine: pack the logs.
[ -n "${OUT:-}" ] && tar czf "$OUT/multi_gpu.tgz" -C "$(dirname "$logs")" "$(basename "$logs")" && rm -rf "$logs"
[ "$failures" -eq 0 ]
