// make_step_engine: train.device and train.precision (and the process mesh) -> the CPU or the GPU
// engine; the StepEngine's default checkpoint loading through the host copies.
#include "train/step_engine.h"

#include "core/error.h"
#include "parallel/mesh.h"
#include "train/checkpoint.h"
#include "train/cpu_engine.h"
#include "train/gpu_engine.h"
#include "train/gpu_pipeline_engine.h"
#include "train/pipeline_engine.h"
#include "train/recipe.h"

namespace frugal {

void StepEngine::load_checkpoint(const std::string& checkpoint_dir) {
  load_checkpoint_model(checkpoint_dir, host_model());
  load_checkpoint_optimizer(checkpoint_dir, host_optimizer());
  upload_host_state();
}

std::vector<Losses> StepEngine::forward_backward_step(const int32_t*, const int32_t*, int64_t,
                                                      int64_t, int64_t, const LossWeights&) {
  fail("this engine ({}) runs micro-batches one at a time (forward_backward)", description());
}

std::unique_ptr<StepEngine> make_step_engine(const Config& config, const Mesh* mesh) {
  const Device device = parse_device(config.train.device);
  const Recipe recipe = parse_recipe(config.train.precision);
  if (device == Device::Cpu) {
    cpu_recipe(recipe);
    if (mesh != nullptr && mesh->shape().pp > 1) return make_pipeline_engine(config, *mesh);
    return std::make_unique<CpuEngine>(config, mesh);
  }
  // Several GPUs: data and expert parallelism (GpuEngine), or the pipeline over pp x dp (x ep).
  const bool several = mesh != nullptr && mesh->world().size() > 1;
  if (several && mesh->shape().pp > 1) {
    check_gpu_pipeline_mesh(config, *mesh);
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL)
    return make_gpu_pipeline_engine(config, *mesh);
#else
    fail("train.device = \"cuda\" with train.pp = {}: this frugal was built without CUDA and "
         "NCCL (the GPU pipeline needs both), or set train.device = \"cpu\"",
         mesh->shape().pp);
#endif
  }
#ifdef FRUGAL_HAVE_CUDA
  return make_gpu_engine(config, several ? mesh : nullptr);
#else
  fail(
      "train.device = \"cuda\": this frugal was built without the CUDA backend (configure with "
      "-DFRUGAL_CUDA=ON where nvcc is installed), or set train.device = \"cpu\"");
#endif
}

}  // namespace frugal
