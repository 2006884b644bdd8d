// make_step_engine: train.device and train.precision -> the CPU or the GPU engine.
#include "train/step_engine.h"

#include "core/error.h"
#include "train/cpu_engine.h"
#include "train/gpu_engine.h"
#include "train/recipe.h"

namespace frugal {

std::unique_ptr<StepEngine> make_step_engine(const Config& config) {
  const Device device = parse_device(config.train.device);
  const Recipe recipe = parse_recipe(config.train.precision);
  if (device == Device::Cpu) {
    cpu_recipe(recipe);
    return std::make_unique<CpuEngine>(config);
  }
#ifdef FRUGAL_HAVE_CUDA
  return make_gpu_engine(config);
#else
  fail(
      "train.device = \"cuda\": this frugal was built without the CUDA backend (configure with "
      "-DFRUGAL_CUDA=ON where nvcc is installed), or set train.device = \"cpu\"");
#endif
}

}  // namespace frugal
