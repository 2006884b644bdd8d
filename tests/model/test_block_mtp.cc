// Finite-difference gradient checks (double precision) for the modules that compose others:
// Embedding, Block (dense and MoE FFN) and the MTP module.
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/block.h"
#include "model/embedding.h"
#include "model/mtp.h"
#include "model/tiny_model_config.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

ModelConfig small_config() {
  ModelConfig c = testing::tiny_model_config();
  c.vocab_size = 13;
  c.intermediate_size = 10;
  return c;
}

void randomize(ParamStore<double>& store, uint64_t seed) {
  for (auto& p : store.all()) {
    RandomStream rng(seed, hash_name(p->name));
    for (int64_t i = 0; i < p->numel(); ++i)
      p->value[i] = !p->trainable ? 0.05 * rng.uniform(i)
                    : p->weight_decay ? 0.4 * rng.normal(i)
                                      : 1 + 0.2 * rng.normal(i);
  }
}

double check_all(ParamStore<double>& store, std::vector<double>& x, const std::vector<double>& dx,
                 const std::function<double()>& loss, const std::string& label) {
  double worst = check_gradient(x, dx, loss, 32, 1e-5, 1e-6, label + " dx").max_rel_error;
  for (auto& p : store.all())
    if (p->trainable)
      worst = std::max(worst, check_gradient(p->value, p->grad, loss, 8, 1e-5, 1e-6, p->name)
                                  .max_rel_error);
  return worst;
}

TEST(Embedding, WeightGradientAccumulatesRowsOfRepeatedIds) {
  ParamStore<double> store;
  Embedding<double> embed(store, "embed", 5, 3);
  fill_normal(embed.table().value, 1);
  std::vector<int32_t> ids = {4, 1, 4};
  std::vector<double> out(9), w(9);
  fill_normal(w, 2);
  Embedding<double>::Ctx ctx;
  embed.forward(ctx, ids.data(), out.data(), 3);
  embed.backward_input(ctx, w.data());
  embed.backward_weight(ctx);
  auto loss = [&] {
    Embedding<double>::Ctx c;
    embed.forward(c, ids.data(), out.data(), 3);
    return weighted_sum(out, w);
  };
  EXPECT_LT(check_gradient(embed.table().value, embed.table().grad, loss, 15, 1e-6, 1e-7,
                           "embedding table")
                .max_rel_error,
            1e-7);
  std::vector<int32_t> bad = {5};
  Embedding<double>::Ctx c;
  EXPECT_THROW(embed.forward(c, bad.data(), out.data(), 1), Error);
}

class BlockGrad : public ::testing::TestWithParam<int64_t> {};

TEST_P(BlockGrad, GradientsMatchFiniteDifferences) {
  const int64_t layer = GetParam();  // 0: dense FFN, 1: MoE
  ModelConfig cfg = small_config();
  ParamStore<double> store;
  Block<double> block(store, "model.layers." + std::to_string(layer), cfg, layer);
  randomize(store, 3);
  const int64_t batch = 2, seq = 5, n = batch * seq * cfg.hidden_size;
  std::vector<double> x(n), y(n), w(n), dx(n);
  fill_normal(x, 4);
  fill_normal(w, 5);
  const double alpha = 0.05, dbalance = 1.3;  // L = sum(y*w) + 1.3 * balance
  auto loss = [&] {
    Block<double>::Ctx c;
    double balance = block.forward(c, x.data(), y.data(), batch, seq, alpha, false);
    return weighted_sum(y, w) + dbalance * balance;
  };
  Block<double>::Ctx ctx;
  block.forward(ctx, x.data(), y.data(), batch, seq, alpha, false);
  block.backward_input(ctx, w.data(), dx.data(), dbalance);
  block.backward_weight(ctx);
  double worst = check_all(store, x, dx, loss, "block" + std::to_string(layer));
  std::printf("block (layer %lld): max rel error %.3e\n", static_cast<long long>(layer), worst);
  EXPECT_LT(worst, 1e-5);
}
INSTANTIATE_TEST_SUITE_P(DenseAndMoe, BlockGrad, ::testing::Values(0, 1));

TEST(MtpModule, GradientsMatchFiniteDifferences) {
  ModelConfig cfg = small_config();
  ParamStore<double> store;
  MtpModule<double> mtp(store, "model.layers.2", cfg, 2);
  randomize(store, 6);
  const int64_t batch = 2, seq = 4, n = batch * seq * cfg.hidden_size;
  std::vector<double> emb(n), h(n), h_out(n), normed(n), w_out(n), w_norm(n), demb(n), dh(n);
  fill_normal(emb, 7);
  fill_normal(h, 8);
  fill_normal(w_out, 9);
  fill_normal(w_norm, 10);
  // L = sum(h_out * w_out) + sum(normed * w_norm) + balance: both outputs carry gradient.
  auto loss = [&] {
    MtpModule<double>::Ctx c;
    double balance = mtp.forward(c, emb.data(), h.data(), h_out.data(), normed.data(), batch, seq,
                                 0.05, false);
    return weighted_sum(h_out, w_out) + weighted_sum(normed, w_norm) + balance;
  };
  MtpModule<double>::Ctx ctx;
  mtp.forward(ctx, emb.data(), h.data(), h_out.data(), normed.data(), batch, seq, 0.05, false);
  mtp.backward_input(ctx, w_out.data(), w_norm.data(), demb.data(), dh.data(), 1.0);
  mtp.backward_weight(ctx);
  double worst = check_all(store, emb, demb, loss, "mtp emb");
  worst = std::max(worst, check_gradient(h, dh, loss, 32, 1e-5, 1e-6, "mtp h_prev").max_rel_error);
  std::printf("mtp module: max rel error %.3e\n", worst);
  EXPECT_LT(worst, 1e-5);
}

}  // namespace
}  // namespace frugal
