// The process mesh of a multi-process run (spec §5.1: PP x EP x ZeRO-1 DP, no tensor parallelism):
// world = pp * dp ranks; the dp ranks of one pipeline stage are the data-parallel group, and
// inside it consecutive blocks of ep ranks are the expert-parallel groups (V3: EP64 inside DP).
//
//   world rank = stage * dp + dp_rank          (a stage's DP ranks are consecutive: one node first)
//   dp_rank    = ep_group * ep + ep_rank
//
// Groups of one rank (each a Communicator split from the world, ranks ordered by dp_rank / stage):
//   dp         the dp ranks of its stage: dense gradients are summed here (ZeRO-1 shards)
//   ep         the ep ranks of its EP group: tokens are exchanged here (all-to-all dispatch)
//   expert_dp  the dp/ep ranks of its stage with the same ep_rank: they hold the same experts, so
//              expert gradients are summed (and their ZeRO-1 shards spread) over them
//   pp         the pp ranks with its dp_rank, one per stage (pipeline send/recv)
// EP rank r holds routed experts [r*E/ep, (r+1)*E/ep) of every MoE layer (expert_parallel.h).
//
// The shape comes from the world size and the config keys train.pp and train.ep (dp = world / pp);
// mesh_shape checks world = pp * dp, dp % ep == 0 and n_routed_experts % ep == 0 and names the
// keys in its errors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/config.h"
#include "parallel/communicator.h"
#include "train/train_config.h"

namespace frugal {

struct MeshShape {
  int pp = 1, dp = 1, ep = 1;
  int world() const { return pp * dp; }
  int expert_dp() const { return dp / ep; }
};

struct MeshCoords {
  int stage = 0;     // pipeline stage
  int dp_rank = 0;   // rank inside the stage's data-parallel group
  int ep_group = 0;  // which EP group of the stage
  int ep_rank = 0;   // rank inside the EP group
};

// Checks and returns the shape of a world of `world` ranks under train.pp / train.ep.
MeshShape mesh_shape(int world, const TrainConfig& train, const ModelConfig& model);
// Coordinates of world rank `rank`.
MeshCoords mesh_coords(const MeshShape& shape, int rank);
// "pp 1 x dp 4 (ep 2 inside dp)" for logs.
std::string describe(const MeshShape& shape);
// This process's rank among the ranks the launcher started on its node, from the launcher's
// variable (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID); -1 when none is set.
// The GPU engines drive the GPU of that index.
int node_local_rank();

class Mesh {
 public:
  // Collective over `world` (every rank calls it): splits the groups. `world` must outlive the mesh.
  Mesh(Communicator& world, const MeshShape& shape);

  const MeshShape& shape() const { return shape_; }
  const MeshCoords& coords() const { return coords_; }
  Communicator& world() const { return *world_; }
  Communicator& dp() const { return *dp_; }
  Communicator& ep() const { return *ep_; }
  Communicator& expert_dp() const { return *expert_dp_; }
  Communicator& pp() const { return *pp_; }

 private:
  MeshShape shape_;
  MeshCoords coords_;
  Communicator* world_;
  std::unique_ptr<Communicator> dp_, ep_, expert_dp_, pp_;
};

}  // namespace frugal
