#!/usr/bin/env bash
# Builds frugal and runs every CPU test (CUDA tests carry the label "cuda" and run on GPU machines
# through scripts/gpu_round.sh). Installs missing Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build_dir=${FRUGAL_BUILD_DIR:-build}
# Test programs run two at a time on small machines: OpenMP threads must not spin while waiting.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --test-dir "$build_dir" -LE cuda --output-on-failure -j "$(nproc)" --timeout 1500
