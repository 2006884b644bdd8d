// ZeRO-1 on its own, at 2 and 4 ranks: every rank sets made-up gradients (a function of rank and
// parameter name); the sharded step must equal, bitwise, a single-process AdamW step on the sum of
// those gradients in rank order (dense parameters: over all ranks; routed experts under EP 2: over
// the ranks holding them). A vocabulary of 2100 makes the embedding and head span two norm chunks
// (kGradNormChunk), and small buckets cut parameters across buckets and shards. Also:
// grad_ready reduces buckets as their parameters become final (in order, none early), a
// non-finite gradient on one rank skips the step on every rank, and the layout covers the
// whole model exactly once.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "parallel/expert_parallel.h"
#include "parallel_test_util.h"
#include "train/zero1.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

float made_up_gradient(int rank, const std::string& name, int64_t i) {
  RandomStream rng(1000 + rank, hash_name(name));
  return static_cast<float>(0.01 * rng.normal(i));
}

Config zero1_config(int ep) {
  Config c = parallel_test_config("unused", {"model.vocab_size=2100"});
  c.train.ep = ep;
  return c;
}

// The expert index of a routed expert parameter name, -1 otherwise.
int64_t expert_of(const std::string& name) {
  const std::string key = ".mlp.experts.";
  const size_t at = name.find(key);
  return at == std::string::npos ? -1 : std::stoll(name.substr(at + key.size()));
}

void check_sharded_step_matches_single_process(Communicator& world, int ep, bool use_grad_ready) {
  const Config config = zero1_config(ep);
  const MeshShape shape = mesh_shape(world.size(), config.train, config.model);
  Mesh mesh(world, shape);
  const ExpertShard shard = ep > 1 ? expert_shard(config.model.n_routed_experts, ep, mesh.coords().ep_rank)
                                   : ExpertShard{};
  Transformer<float> model(config.model, shard);
  model.init_weights(5, 0.02);
  Transformer<float> reference(config.model);
  reference.init_weights(5, 0.02);
  const int64_t per_rank = config.model.n_routed_experts / ep;

  for (auto& p : model.params().all())
    for (int64_t i = 0; i < static_cast<int64_t>(p->grad.size()); ++i)
      p->grad[i] = made_up_gradient(world.rank(), p->name, i);
  for (auto& p : reference.params().all()) {
    const int64_t e = expert_of(p->name);
    bool first = true;
    for (int r = 0; r < world.size(); ++r) {
      if (e >= 0 && ep > 1 && r % ep != e / per_rank) continue;  // ranks holding expert e
      for (int64_t i = 0; i < static_cast<int64_t>(p->grad.size()); ++i)
        p->grad[i] = first ? made_up_gradient(r, p->name, i) : p->grad[i] + made_up_gradient(r, p->name, i);
      first = false;
    }
  }

  Zero1Optimizer zero1(config.optim, model, mesh, /*bucket_elements=*/20000);
  EXPECT_GT(zero1.num_buckets(), 4);
  // Each trainable element of the whole model has exactly one owner among all ranks (experts:
  // one of the ranks holding them), so the shards add up to the model.
  int64_t trainable = 0;
  for (auto& p : reference.params().all()) trainable += p->trainable ? p->numel() : 0;
  EXPECT_EQ(zero1.total_elements(), trainable);
  int64_t shards = zero1.shard_elements();
  world.all_reduce_sum(&shards, 1, CommType::I64);
  EXPECT_EQ(shards, trainable);
  const auto layout = global_param_layout(model);
  ASSERT_EQ(layout.size(), reference.params().size());
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_EQ(layout[i].name, reference.params().all()[i]->name);
    EXPECT_EQ(layout[i].local != nullptr, model.params().find(layout[i].name) != nullptr);
  }

  if (use_grad_ready) {
    // Backward order: the last parameters are final first. No bucket before its parameters.
    const auto& all = model.params().all();
    int64_t reduced = 0;
    for (size_t k = all.size(); k-- > 0;) {
      zero1.grad_ready(*all[k]);
      EXPECT_GE(zero1.buckets_reduced(), reduced);
      reduced = zero1.buckets_reduced();
      if (k > 0) {
        EXPECT_LT(reduced, zero1.num_buckets()) << "the last bucket holds the first parameter";
      }
    }
    EXPECT_EQ(zero1.buckets_reduced(), zero1.num_buckets());
    EXPECT_NE(error_message([&] { zero1.grad_ready(*all.back()); }).find("marked ready twice"),
              std::string::npos);
  }
  zero1.reduce_gradients();
  const auto info = zero1.step(2e-3);

  AdamW<float> single(config.optim, reference.params());
  const auto expected = single.step(reference.params(), 2e-3);
  EXPECT_EQ(info.grad_norm, expected.grad_norm);
  EXPECT_EQ(info.clip_scale, expected.clip_scale);
  EXPECT_EQ(zero1.step_count(), 1);
  for (auto& p : model.params().all())
    EXPECT_EQ(std::memcmp(p->value.data(), reference.params().get(p->name).value.data(),
                          p->value.size() * sizeof(float)),
              0)
        << p->name;
}

TEST(Zero1, ShardedStepIsBitwiseTheSingleProcessStep) {
  auto world = mpi_world_communicator();
  check_sharded_step_matches_single_process(*world, 1, /*use_grad_ready=*/false);
}

TEST(Zero1, GradReadyReducesBucketsInBackwardOrder) {
  auto world = mpi_world_communicator();
  check_sharded_step_matches_single_process(*world, 1, /*use_grad_ready=*/true);
}

TEST(Zero1, ExpertShardsSumOverTheirReplicasOnly) {
  auto world = mpi_world_communicator();
  check_sharded_step_matches_single_process(*world, 2, /*use_grad_ready=*/true);
}

TEST(Zero1, NonFiniteGradientOnOneRankSkipsTheStepEverywhere) {
  auto world = mpi_world_communicator();
  const Config config = zero1_config(1);
  Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
  Transformer<float> model(config.model);
  model.init_weights(5, 0.02);
  const std::vector<float> before = model.params().get("model.norm.weight").value;
  for (auto& p : model.params().all()) std::fill(p->grad.begin(), p->grad.end(), 0.001f);
  if (world->rank() == world->size() - 1) model.params().get("lm_head.weight").grad[7] = NAN;
  Zero1Optimizer zero1(config.optim, model, mesh);
  zero1.reduce_gradients();
  const auto info = zero1.step(1e-3);
  EXPECT_TRUE(info.skipped);
  EXPECT_EQ(zero1.step_count(), 0);
  EXPECT_EQ(model.params().get("model.norm.weight").value, before);
  EXPECT_NE(error_message([&] { zero1.step(1e-3); }).find("without reduce_gradients"),
            std::string::npos);
}

}  // namespace
}  // namespace frugal
