// The GPU training engine (train.device = "cuda"): GpuTransformer (model/gpu/gpu_transformer.h)
// and GpuAdamW (train/gpu_optimizer.h) on one GPU (device 0 of the visible ones), behind the
// StepEngine interface the trainer drives.
//
// Data parallelism (a Mesh of dp > 1 ranks, train.pp = 1; builds with NCCL): each process drives
// the GPU of its local rank on its node (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or
// SLURM_LOCALID; else the world rank) and runs its own micro-batches. optimizer_step first sums
// every MoE layer's expert-load counters and then every dense gradient over the dp group through an
// NCCL communicator bootstrapped from the mesh's dp group (parallel/gpu_data_parallel.h: in place,
// small tensors bucketed), then runs GpuAdamW on every rank: the replicas make the same update and
// stay bitwise equal. That is the all-reduce path (train.gpu_zero1 = false: every rank keeps the
// whole optimizer state). By default (train.gpu_zero1 = true, ep = 1) the engine runs ZeRO-1
// instead (parallel/gpu_zero1.h): the gradients are reduce-scattered in buckets, each rank keeps
// and updates only its shard of the AdamW moments (about 1/dp of them), and the updated fp32
// weights are all-gathered; host_optimizer() and checkpoint_state() are then collective over the
// dp group (the moment shards are all-gathered) and loading a checkpoint uploads each rank's
// shard. The MFU peak is the whole job's. Under ZeRO-1 without expert parallelism the buckets are
// reduce-scattered during the backward of the step's last micro-batch as they become ready
// (GpuZero1Optimizer's overlap; FRUGAL_ZERO1_OVERLAP=0 turns it off, the results are bitwise the
// same); FRUGAL_ZERO1_BUCKET_ELEMENTS sets the bucket size (elements).
//
// Expert parallelism (train.ep > 1, EP groups inside dp, parallel/mesh.h): an NCCL communicator
// over the mesh's ep group is made before the model, whose MoE layers then hold only this EP rank's
// routed experts [r*E/ep, (r+1)*E/ep) and exchange token rows with the other EP ranks
// (model/gpu/gpu_moe.h); GpuAdamW covers only the tensors held here. Routed-expert gradients skip
// the dp sum and are summed over the expert_dp group (ranks holding the same experts; nothing to do
// when dp == ep). The gradient norm is the whole model's (dense squares, plus the experts' squares
// summed over the EP group on the host) and the engine applies the clip itself (the same scale on
// every rank) before an unclipped GpuAdamW; a non-finite norm skips the step on every rank.
// Checkpoints: host_model() / host_optimizer() are then collective over the EP group (every rank
// gathers every expert's values and moments from its owner, a host broadcast per tensor), so
// checkpoint_state() is called on every rank and dp rank 0 returns the whole state; on load each
// rank uploads its slice. Pipeline parallelism on GPUs (train.pp > 1) is another engine:
// train/gpu_pipeline_engine.h.
//
// Without expert parallelism dp rank 0 alone returns the checkpoint state (the files a single
// process writes); every rank loads a checkpoint whole.
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

#include <cstdint>
#include <memory>
#include <string>

#include "train/recipe.h"
#include "train/step_engine.h"

namespace frugal {

class Mesh;

// `mesh`: null for one process; else this rank's place in a data-parallel run (collective: every
// rank of the mesh constructs its engine).
std::unique_ptr<StepEngine> make_gpu_engine(const Config& config, const Mesh* mesh = nullptr);

// Dense (no sparsity) tensor-core peak FLOP/s of Hopper GPUs from NVIDIA's datasheets, by recipe:
// bf16 / fp8 GEMMs, and fp32 for the fp32 recipe (no TF32: the CUDA-core FMA peak).
//   H100/H200/H800 SXM and GH200: 989 / 1979 / 67 TFLOP/s;  NVL: 835 / 1671 / 60;
//   H100 PCIe: 756 / 1513 / 51.
// 0 (unknown) for other GPUs. `device_name` is cudaDeviceProp::name ("NVIDIA H200", ...).
double gpu_peak_flops(const std::string& device_name, int compute_capability, Recipe recipe);

// Device bytes of the optimizer moments held by this rank of a GPU engine (the whole model's under
// the all-reduce path, about 1/dp of them under ZeRO-1). Throws for another engine. Builds with
// the CUDA backend only.
int64_t gpu_optimizer_state_bytes(const StepEngine& engine);

// ZeRO-1's buckets on this rank of a GPU engine: how many, and how many were reduce-scattered
// during a backward (before the optimizer step: the overlap, FRUGAL_ZERO1_OVERLAP) in the last
// step and over the run. All 0 without ZeRO-1. Throws for another engine. Builds with the CUDA
// backend only.
struct GpuZero1BucketCounts {
  int64_t buckets = 0;
  int64_t early_last_step = 0;
  int64_t early_total = 0;
  // Of early_last_step, those launched on a decoder layer's notification (before the end of the
  // backward): only buckets whose every rank's part lies inside the decoder layers.
  int64_t on_layers_last_step = 0;
};
GpuZero1BucketCounts gpu_zero1_bucket_counts(const StepEngine& engine);

constexpr double kH200DenseBf16Flops = 989e12;
constexpr double kH200DenseFp8Flops = 1979e12;

}  // namespace frugal
