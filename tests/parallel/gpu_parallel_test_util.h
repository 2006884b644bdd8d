// Shared by the multi-GPU training tests (test_gpu_dp_cuda.cc, test_gpu_ep_cuda.cc): the whole host
// model as one vector, the tolerances of a run-against-one-GPU comparison, and the check that each
// rank has a GPU of its own.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "parallel_test_util.h"

namespace frugal::testing {

inline std::vector<float> all_values(Trainer& trainer) {
  std::vector<float> out;
  for (auto& p : trainer.model().params().all())
    out.insert(out.end(), p->value.begin(), p->value.end());
  return out;
}

struct Tolerances {
  double metrics;                        // relative, every logged loss / norm / validation loss
  double model_whole, model_tensor;      // relative L2 of model.safetensors
  double moments_whole, moments_tensor;  // relative L2 of optimizer.safetensors
};

// "" when every rank can have its own GPU, else why not (for GTEST_SKIP).
inline std::string missing_gpu_per_rank(int ranks) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < ranks)
    return "needs one GPU per rank (" + std::to_string(devices) + " GPUs, " +
           std::to_string(ranks) + " ranks)";
  return "";
}

}  // namespace frugal::testing
