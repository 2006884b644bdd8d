// The GPU pipeline training engine (train.device = "cuda", train.pp > 1): parallel/
// gpu_pipeline_runner.h's GpuPipelineRunner and GpuPipelineAdamW behind the StepEngine interface,
// one GPU per rank (the node-local rank's), on a mesh pp x dp (parallel/mesh.h) with optional
// expert parallelism inside dp, like the CPU PipelineEngine. It runs a whole step at once
// (runs_whole_step): the trainer hands every rank the step's micro-batches [micro_batches, batch,
// seq]; dp rank d keeps micro-batches d, d + dp, ... and plays the schedule train.pp_schedule
// ("1f1b", "zb1p", "dualpipe", "dualpipev") over them on the mesh's pp group (an NCCL communicator
// bootstrapped from it carries the activations and gradients); the returned Losses are the
// micro-batches this rank ran, zeros for the others (the trainer sums over dp). The micro-batch
// count is fixed when the engine is built (train.batch_sequences / train.micro_batch, a multiple
// of dp; no batch ramp).
// Data parallelism (dp > 1): the runner's step ends with the stage's gradients all-reduced over the
// stage's dp group through NCCL (no ZeRO-1 in the pipeline: every rank keeps its stages' whole
// GpuAdamW state); optimizer_step first sums the MoE load counters over dp.
// Expert parallelism (train.ep > 1): each stage's MoE layers are built inside an
// ExpertParallelScope over an NCCL communicator of the mesh's ep group (this EP rank's routed
// experts; tokens dispatched through NCCL); held experts' gradients are summed over expert_dp, and
// the norm adds the experts' squares over the EP group (GpuPipelineRunner).
// FRUGAL_PIPELINE_TIMING=1: every step, world rank 0 prints each pipeline rank's measured step,
// busy and idle time next to the schedule's expected bubble with the measured F and B.
//
// Every rank also holds the whole model as a single-process Transformer<float> and AdamW<float>
// (the host copies, values only): initialized from train.seed / train.init_std like the GPU engine,
// then uploaded into the stages. checkpoint_state() brings them up to date (collective over the
// mesh: each tensor and its moments from the one rank whose copy the norm counts, there (EP) a
// routed expert's owner and a dense tensor's EP rank 0, zeros from the others, summed on the host
// over the EP group and then the pipeline; every rank ends with the whole model) and hands them
// to world rank 0, which writes the single-process files. host_model() / host_optimizer() are not
// collective and return the state of the last gather, load or upload. upload_host_state() copies
// the host copies into the stages and the local GpuAdamW's moments (resume: the default
// load_checkpoint reads any checkpoint into the host copies, then uploads).
//
// Validation (evaluate): one forward-only pass through the stages in stage order
// (GpuPipelineRunner::evaluate). Expert load: every stage's device counters mapped onto the whole
// model's MoE layers and summed over the pipeline ranks (DualPipe's two copies add up).
// The engine exists in CUDA + NCCL builds only.
#pragma once

#include <memory>

#include "train/step_engine.h"

namespace frugal {

class Mesh;

// Throws naming the settings when the mesh's ep is not train.ep or the step's micro-batches
// (train.batch_sequences / train.micro_batch) do not split evenly over dp. In every build
// (make_step_engine checks before anything else).
void check_gpu_pipeline_mesh(const Config& config, const Mesh& mesh);

// Collective over the mesh (every rank builds its engine). Throws naming the setting for a batch
// ramp or a micro-batch count the schedule refuses.
std::unique_ptr<StepEngine> make_gpu_pipeline_engine(const Config& config, const Mesh& mesh);

}  // namespace frugal
