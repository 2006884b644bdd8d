// Parsing, naming and choosing training recipes and devices (see recipe.h).
#include "train/recipe.h"

#include "core/error.h"

namespace frugal {

Recipe parse_recipe(std::string_view text) {
  if (text == "fp32") return Recipe::Fp32;
  if (text == "bf16") return Recipe::Bf16;
  if (text == "fp8") return Recipe::Fp8;
  fail("train.precision = \"{}\" is not one of \"fp32\", \"bf16\", \"fp8\"", text);
}

std::string_view recipe_name(Recipe recipe) {
  switch (recipe) {
    case Recipe::Fp32:
      return "fp32";
    case Recipe::Bf16:
      return "bf16";
    case Recipe::Fp8:
      return "fp8";
  }
  return "?";
}

Device parse_device(std::string_view text) {
  if (text == "cpu") return Device::Cpu;
  if (text == "cuda") return Device::Cuda;
  fail("train.device = \"{}\" is not one of \"cpu\", \"cuda\"", text);
}

std::string_view device_name(Device device) {
  return device == Device::Cpu ? "cpu" : "cuda";
}

RecipeChoice choose_recipe(Recipe requested, int compute_capability) {
  FRUGAL_CHECK(compute_capability > 0, "choose_recipe: compute capability {} is not valid",
               compute_capability);
  if (requested != Recipe::Fp8 || compute_capability >= kMinFp8ComputeCapability)
    return {requested, ""};
  return {Recipe::Bf16,
          fmt::format("train.precision = \"fp8\" needs a GPU of compute capability {}.{}+ "
                      "(this one is {}.{}): training in bf16 instead",
                      kMinFp8ComputeCapability / 10, kMinFp8ComputeCapability % 10,
                      compute_capability / 10, compute_capability % 10)};
}

Recipe cpu_recipe(Recipe requested) {
  FRUGAL_CHECK(requested == Recipe::Fp32,
               "train.precision = \"{}\" needs train.device = \"cuda\": the CPU trainer runs fp32 "
               "only (set train.precision = \"fp32\" to train on the CPU)",
               recipe_name(requested));
  return Recipe::Fp32;
}

}  // namespace frugal
