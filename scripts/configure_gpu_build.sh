# Sourced by the GPU-machine scripts (run from the repository root, carrying .carry/gpu-deps):
#   configure_gpu_build BUILD_DIR LOG_FILE
# configures a Release CUDA build in BUILD_DIR against the headers and pkg-config files carried in
# .carry/gpu-deps (the GPU machine lacks some -dev packages: DESIGN.md, "The two kinds of
# machine"), linking their libraries to the runtime ones installed there. Returns cmake's status;
# its output goes to LOG_FILE.
configure_gpu_build() {
  local build=$1 log=$2 deps=$PWD/.carry/gpu-deps lib
  for lib in pcre2-8 xxhash; do
    ln -sfn "/usr/lib/x86_64-linux-gnu/lib$lib.so.0" "$deps/lib/lib$lib.so"
  done
  PKG_CONFIG_PATH="$deps/pkgconfig" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFRUGAL_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
    -DFRUGAL_EXTRA_INCLUDE="$deps/include" > "$log" 2>&1
}
