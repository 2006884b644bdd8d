// The process mesh: the config keys train.pp / train.ep (validated, saved as 1 in checkpoints);
// shape checks name the config keys; every group (dp, ep, expert_dp, pp) holds
// exactly the world ranks mesh.h's formulas say, in order. At 8 ranks the mesh has two pipeline
// stages, so the stage split is exercised too.
#include <gtest/gtest.h>

#include "io/config_io.h"
#include "parallel/mesh.h"
#include "parallel/mpi_communicator.h"
#include "test_util.h"

namespace frugal {
namespace {

using ::frugal::testing::error_message;

TrainConfig layout(int64_t pp, int64_t ep) {
  TrainConfig t;
  t.pp = pp;
  t.ep = ep;
  return t;
}

ModelConfig experts(int64_t n) {
  ModelConfig m;
  m.n_routed_experts = n;
  return m;
}

TEST(MeshShape, ChecksNameTheKeys) {
  EXPECT_NE(error_message([] { mesh_shape(4, layout(3, 1), experts(8)); }).find("train.pp = 3"),
            std::string::npos);
  EXPECT_NE(error_message([] { mesh_shape(4, layout(1, 3), experts(6)); }).find("train.ep = 3"),
            std::string::npos);
  EXPECT_NE(error_message([] { mesh_shape(8, layout(1, 4), experts(6)); })
                .find("model.n_routed_experts = 6"),
            std::string::npos);
  EXPECT_NE(error_message([] { mesh_shape(4, layout(1, 2), experts(0)); }).find("no routed experts"),
            std::string::npos);
  const MeshShape s = mesh_shape(8, layout(2, 2), experts(8));
  EXPECT_EQ(s.pp, 2);
  EXPECT_EQ(s.dp, 4);
  EXPECT_EQ(s.ep, 2);
  EXPECT_EQ(s.expert_dp(), 2);
  const MeshCoords c = mesh_coords(s, 7);
  EXPECT_EQ(c.stage, 1);
  EXPECT_EQ(c.dp_rank, 3);
  EXPECT_EQ(c.ep_group, 1);
  EXPECT_EQ(c.ep_rank, 1);
}

TEST(MeshShape, ConfigKeysAreReadAndChecked) {
  const std::string tiny = std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml";
  const Config config = load_config(tiny, {"train.pp=2", "train.ep=4"});
  EXPECT_EQ(config.train.pp, 2);
  EXPECT_EQ(config.train.ep, 4);
  EXPECT_EQ(load_config(tiny).train.ep, 1);
  EXPECT_NE(error_message([&] { load_config(tiny, {"train.ep=3"}); })
                .find("train.ep = 3 must divide model.n_routed_experts = 8"),
            std::string::npos);
  EXPECT_NE(error_message([&] { load_config(tiny, {"train.pp=0"}); }).find("train.pp = 0"),
            std::string::npos);
}

// The world ranks of `group`, in group order.
std::vector<int32_t> members(Communicator& group, int world_rank) {
  std::vector<int32_t> out(static_cast<size_t>(group.size()));
  const int32_t mine = world_rank;
  group.all_gather(out.data(), &mine, 1, CommType::I32);
  return out;
}

TEST(Mesh, GroupsHoldTheRanksOfTheFormulas) {
  auto world = mpi_world_communicator();
  const int size = world->size(), rank = world->rank();
  const int64_t pp = size >= 8 ? 2 : 1;
  const int64_t ep = size / pp >= 2 ? 2 : 1;
  const MeshShape shape = mesh_shape(size, layout(pp, ep), experts(8));
  Mesh mesh(*world, shape);
  const MeshCoords c = mesh.coords();
  EXPECT_EQ(rank, c.stage * shape.dp + c.dp_rank);
  EXPECT_EQ(mesh.dp().rank(), c.dp_rank);
  EXPECT_EQ(mesh.ep().rank(), c.ep_rank);
  EXPECT_EQ(mesh.expert_dp().rank(), c.ep_group);
  EXPECT_EQ(mesh.pp().rank(), c.stage);

  std::vector<int32_t> dp, ep_group, expert_dp, stages;
  for (int d = 0; d < shape.dp; ++d) dp.push_back(c.stage * shape.dp + d);
  for (int e = 0; e < shape.ep; ++e) ep_group.push_back(c.stage * shape.dp + c.ep_group * shape.ep + e);
  for (int g = 0; g < shape.expert_dp(); ++g)
    expert_dp.push_back(c.stage * shape.dp + g * shape.ep + c.ep_rank);
  for (int s = 0; s < shape.pp; ++s) stages.push_back(s * shape.dp + c.dp_rank);
  EXPECT_EQ(members(mesh.dp(), rank), dp);
  EXPECT_EQ(members(mesh.ep(), rank), ep_group);
  EXPECT_EQ(members(mesh.expert_dp(), rank), expert_dp);
  EXPECT_EQ(members(mesh.pp(), rank), stages);
}

TEST(Mesh, RefusesAShapeForAnotherWorldSize) {
  auto world = mpi_world_communicator();
  MeshShape shape;
  shape.dp = world->size() + 1;
  EXPECT_NE(error_message([&] { Mesh mesh(*world, shape); }).find("needs"), std::string::npos);
}

}  // namespace
}  // namespace frugal
