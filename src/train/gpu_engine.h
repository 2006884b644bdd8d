// The GPU training engine (train.device = "cuda"): GpuTransformer (model/gpu/gpu_transformer.h)
// and GpuAdamW (train/gpu_optimizer.h) on one GPU (device 0 of the visible ones), behind the
// StepEngine interface the trainer drives.
//
// The weights start on the host: a CPU Transformer<float> of the same config is initialized from
// train.seed / train.init_std exactly as the CPU engine does, then uploaded, so CPU and GPU runs
// start from identical weights. That host model stays as the engine's host copy (values only: its
// gradient arrays are released) for checkpoints and resume, refreshed from the device on request.
// The precision is train.precision, through choose_recipe (fp8 falls back to bf16 on GPUs before
// sm_90, with a note). MFU is measured against the dense tensor-core peak of the recipe's GEMM
// type (gpu_peak_flops); memory is the caching allocator's peak bytes in use.
//
// This header needs no CUDA headers; the engine exists only in builds with the CUDA backend
// (FRUGAL_HAVE_CUDA), and make_step_engine (train/step_engine.h) refuses train.device = "cuda"
// elsewhere.
#pragma once

#include <memory>
#include <string>

#include "train/recipe.h"
#include "train/step_engine.h"

namespace frugal {

std::unique_ptr<StepEngine> make_gpu_engine(const Config& config);

// Dense (no sparsity) tensor-core peak FLOP/s of Hopper GPUs from NVIDIA's datasheets, by recipe:
// bf16 / fp8 GEMMs, and fp32 for the fp32 recipe (no TF32: the CUDA-core FMA peak).
//   H100/H200/H800 SXM and GH200: 989 / 1979 / 67 TFLOP/s;  NVL: 835 / 1671 / 60;
//   H100 PCIe: 756 / 1513 / 51.
// 0 (unknown) for other GPUs. `device_name` is cudaDeviceProp::name ("NVIDIA H200", ...).
double gpu_peak_flops(const std::string& device_name, int compute_capability, Recipe recipe);

constexpr double kH200DenseBf16Flops = 989e12;
constexpr double kH200DenseFp8Flops = 1979e12;

}  // namespace frugal
