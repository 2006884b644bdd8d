#!/usr/bin/env bash
# Installs frugal's build dependencies from Debian's archive (Debian 12) and builds it.
#   scripts/setup.sh            install packages (if missing) and build into build/
#   scripts/setup.sh --deps     only install packages
# Set FRUGAL_BUILD_DIR to build elsewhere, FRUGAL_CUDA=OFF to skip the CUDA backend.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config git zstd libopenblas-openmp-dev libzstd-dev
          nlohmann-json3-dev libtomlplusplus-dev libfmt-dev libgtest-dev libpcre2-dev libxxhash-dev
          libopenmpi-dev openmpi-bin libcpp-httplib-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
# The OpenAI client test (tests/infer/openai_client) needs the official `openai` npm package.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/infer/openai_client/node_modules ]; then
  (cd tests/infer/openai_client && npm ci --no-audit --no-fund) ||
    echo "setup: npm ci failed; the OpenAI client test will be skipped"
fi
[ "${1:-}" = "--deps" ] && exit 0

build_dir=${FRUGAL_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA="${FRUGAL_CUDA:-ON}"
cmake --build "$build_dir" -j "$(nproc)"
echo "setup: built $build_dir/frugal"
