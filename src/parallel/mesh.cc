// The process mesh (mesh.h): shape checks, coordinates and the group splits.
#include "parallel/mesh.h"

#include <cstdlib>

#include "core/error.h"

namespace frugal {

MeshShape mesh_shape(int world, const TrainConfig& train, const ModelConfig& model) {
  FRUGAL_CHECK(world >= 1, "mesh: world size {} must be >= 1", world);
  FRUGAL_CHECK(train.pp >= 1, "train.pp = {} must be >= 1", train.pp);
  FRUGAL_CHECK(train.ep >= 1, "train.ep = {} must be >= 1", train.ep);
  FRUGAL_CHECK(world % train.pp == 0,
               "train.pp = {} does not divide the {} ranks of this job (world = pp * dp)",
               train.pp, world);
  MeshShape shape;
  shape.pp = static_cast<int>(train.pp);
  shape.dp = world / shape.pp;
  shape.ep = static_cast<int>(train.ep);
  FRUGAL_CHECK(shape.dp % shape.ep == 0,
               "train.ep = {} does not divide the data-parallel size {} (= {} ranks / train.pp {}); "
               "expert-parallel groups live inside the data-parallel group",
               train.ep, shape.dp, world, train.pp);
  FRUGAL_CHECK(shape.ep == 1 || model.n_routed_experts % shape.ep == 0,
               "train.ep = {} does not divide model.n_routed_experts = {} (every EP rank holds "
               "the same number of experts)",
               train.ep, model.n_routed_experts);
  FRUGAL_CHECK(shape.ep == 1 || model.n_routed_experts > 0,
               "train.ep = {} but the model has no routed experts (model.n_routed_experts = 0)",
               train.ep);
  return shape;
}

MeshCoords mesh_coords(const MeshShape& shape, int rank) {
  FRUGAL_CHECK(rank >= 0 && rank < shape.world(), "mesh: rank {} outside a world of {}", rank,
               shape.world());
  MeshCoords c;
  c.stage = rank / shape.dp;
  c.dp_rank = rank % shape.dp;
  c.ep_group = c.dp_rank / shape.ep;
  c.ep_rank = c.dp_rank % shape.ep;
  return c;
}

std::string describe(const MeshShape& shape) {
  return fmt::format("pp {} x dp {} (ep {} inside dp: {} replica{} of each expert)", shape.pp,
                     shape.dp, shape.ep, shape.expert_dp(), shape.expert_dp() == 1 ? "" : "s");
}

Mesh::Mesh(Communicator& world, const MeshShape& shape) : shape_(shape), world_(&world) {
  FRUGAL_CHECK(world.size() == shape.world(),
               "mesh: {} needs {} ranks, the job has {}", describe(shape), shape.world(),
               world.size());
  coords_ = mesh_coords(shape, world.rank());
  const MeshCoords& c = coords_;
  // Colors are unique per group; keys order the ranks inside it. Every rank makes every split.
  dp_ = world.split(c.stage, c.dp_rank);
  ep_ = world.split(c.stage * shape.dp + c.ep_group, c.ep_rank);
  expert_dp_ = world.split(c.stage * shape.ep + c.ep_rank, c.ep_group);
  pp_ = world.split(c.dp_rank, c.stage);
}

int node_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* value = std::getenv(name); value && *value) return std::atoi(value);
  return -1;
}

}  // namespace frugal
