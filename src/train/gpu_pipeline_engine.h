// The GPU pipeline training engine (train.device = "cuda", train.pp > 1, dp = ep = 1): parallel/
// gpu_pipeline_runner.h's GpuPipelineRunner and GpuPipelineAdamW behind the StepEngine interface,
// one GPU per pipeline rank (the node-local rank's). It runs a whole step at once
// (runs_whole_step): the trainer hands every rank the step's micro-batches [micro_batches, batch,
// seq] and the schedule train.pp_schedule ("1f1b", "zb1p", "dualpipe", "dualpipev") plays them over
// the mesh's pp group (an NCCL communicator bootstrapped from it carries the activations and
// gradients). The micro-batch count is fixed when the engine is built (train.batch_sequences /
// train.micro_batch; no batch ramp). Data and expert parallelism around the GPU pipeline are not
// built: dp > 1 or ep > 1 is refused with a message.
//
// Every rank also holds the whole model as a single-process Transformer<float> and AdamW<float>
// (the host copies, values only): initialized from train.seed / train.init_std like the GPU engine,
// then uploaded into the stages. checkpoint_state() brings them up to date (collective over the
// pipeline: each tensor and its moments from the one rank whose copy the norm counts, zeros from
// the others, summed on the host) and hands them to world rank 0, which writes the single-process
// files. host_model() / host_optimizer() are not collective and return the state of the last
// gather, load or upload. upload_host_state() copies the host copies into the stages and the local
// GpuAdamW's moments (resume: the default load_checkpoint reads any checkpoint into the host
// copies, then uploads).
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

// Throws unless the mesh is one pipeline (dp = ep = 1, train.ep = 1), naming the settings. In every
// build (make_step_engine checks before anything else).
void check_gpu_pipeline_mesh(const Config& config, const Mesh& mesh);

// Collective over the mesh (every rank builds its engine). Throws naming the setting for dp > 1,
// ep > 1, a batch ramp, or a micro-batch count the schedule refuses.
std::unique_ptr<StepEngine> make_gpu_pipeline_engine(const Config& config, const Mesh& mesh);

}  // namespace frugal
