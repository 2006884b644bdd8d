export NCCL_NVLS_ENABLE=0; b=build-gpu; deps=$PWD/.carry/gpu-deps
for lib in pcre2-8 xxhash; do ln -sfn /usr/lib/x86_64-linux-gnu/lib$lib.so.0 $deps/lib/lib$lib.so; done
PKG_CONFIG_PATH=$deps/pkgconfig cmake -S . -B $b -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRUGAL_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DFRUGAL_EXTRA_INCLUDE=$deps/include > /dev/null 2>&1
T="test_kernels_quant_cuda test_kernels_quant_dual_cuda test_kernels_swiglu_cuda test_kernels_swiglu_fp8_cuda test_kernels_rmsnorm_cuda test_kernels_adamw_fused_refresh_cuda test_kernels_grouped_gemm_fp8_sm90_cuda test_model_gpu_transformer_cuda test_model_gpu_pipeline_stage_cuda test_train_gpu_train_cuda"
ninja -C $b -j16 $T bench_fp8_ops_cuda bench_train_gpu > $OUT/build.log 2>&1 || { grep error $OUT/build.log | head; }
for t in $T; do timeout 200 $b/$t > $OUT/$t.log 2>&1; echo "$t exit $?"; grep -E "FAILED|PASSED" $OUT/$t.log | head -5; done
timeout 150 $b/bench_fp8_ops_cuda $OUT/fp8_ops.json > $OUT/fp8_ops.log 2>&1; grep -E "copy|quantize_act" $OUT/fp8_ops.log
for r in bf16 fp8 bf16 fp8; do timeout 100 $b/bench_train_gpu configs/bench-1b.toml $r 8 4096 6 --warmup 2 --json $OUT/train_$r.json > $OUT/train_$r.log 2>&1; grep -A2 "^recipe" $OUT/train_$r.log | tail -2; done
rm -f $OUT/test_train_gpu_train_cuda.log
