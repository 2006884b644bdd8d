// Training precision recipes and the device a run trains on: the train.precision and
// train.device settings, parsed, printed, and checked against the hardware.
//
//   recipe  fp32  every op in fp32 (the reference; the only recipe of the CPU trainer)
//           bf16  GEMMs and attention in BF16 with FP32 accumulation, AdamW moments BF16
//           fp8   as bf16, the blocks' Linear GEMMs in FP8 E4M3 with fine-grained scales (spec §4)
//   device  cpu   the CPU reference trainer (train/cpu_engine.h)
//           cuda  one GPU (train/gpu_engine.h); needs a build with the CUDA backend
//
// `enum class Recipe` lives here, not in model/gpu/gpu_transformer.h, so that CPU-only builds
// (which cannot include CUDA headers) parse and validate the setting too; gpu_transformer.h
// includes this header.
#pragma once

#include <string>
#include <string_view>

namespace frugal {

enum class Recipe { Fp32, Bf16, Fp8 };
enum class Device { Cpu, Cuda };

// "fp32" / "bf16" / "fp8" -> Recipe; anything else throws frugal::Error
// `train.precision = "<text>" is not one of "fp32", "bf16", "fp8"`.
Recipe parse_recipe(std::string_view text);
std::string_view recipe_name(Recipe recipe);

// "cpu" / "cuda" -> Device; anything else throws `train.device = "<text>" is not one of ...`.
Device parse_device(std::string_view text);
std::string_view device_name(Device device);

// FP8 GEMMs need the sm_89+ tensor cores; frugal's kernels are built for sm_90a, so sm_90 is the
// minimum that runs them.
constexpr int kMinFp8ComputeCapability = 90;

struct RecipeChoice {
  Recipe recipe = Recipe::Fp32;
  std::string note;  // one line explaining a fallback; empty when the request was granted
};

// The recipe a GPU of `compute_capability` (major * 10 + minor, e.g. 90) runs for `requested`:
// fp32 and bf16 always; fp8 when compute_capability >= kMinFp8ComputeCapability, else bf16 with
// a note saying so.
RecipeChoice choose_recipe(Recipe requested, int compute_capability);

// The CPU trainer runs fp32 only: returns Recipe::Fp32, or throws frugal::Error naming
// train.precision and train.device for bf16/fp8.
Recipe cpu_recipe(Recipe requested);

}  // namespace frugal
